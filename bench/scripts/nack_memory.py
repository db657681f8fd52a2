#!/usr/bin/env python3
"""Issue 15: memory and restart time with N messages nacked with a 1 h delay, against a baseline of
N messages simply scheduled 1 h ahead, on the same binary in one invocation.

Usage: python3 bench/scripts/nack_memory.py target/release/chime [--count 1000000]

Nacked run: preload N normal messages (batches of 1000), then receive 1000 / nack those 1000
with delay_ms = 3600000 until all are nacked (a delayed redelivery is a scheduled message of the
group's retry topic). Baseline run: send N messages with delay_ms = 3600000. Each prints the
server's RssAnon once idle, then the time from SIGTERM + restart to /readyz.
"""
import argparse, json, os, shutil, signal, socket, subprocess, tempfile, time, urllib.request


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


def rss_anon_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return -1


class Server:
    def __init__(self, binary, data):
        self.binary, self.data, self.port = binary, data, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        t0 = time.time()
        self.proc = subprocess.Popen([self.binary, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data],
                                     stderr=open(self.data + ".log", "a"))
        while True:
            try:
                urllib.request.urlopen(self.base + "/readyz", timeout=1)
                return time.time() - t0
            except Exception:
                time.sleep(0.02)

    def restart(self):
        self.proc.send_signal(signal.SIGTERM); self.proc.wait()
        return self.start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM); self.proc.wait()


def run(binary, count, nacked):
    tmp = tempfile.mkdtemp(prefix="chime-nack-")
    s = Server(binary, os.path.join(tmp, "data"))
    t0 = time.time()
    body = "x" * 256
    for i in range(0, count, 1000):
        msg = {"body": body} if nacked else {"body": body, "delay_ms": 3_600_000}
        call(s.base, "POST", "/v1/topics/t/messages", [msg] * min(1000, count - i))
    sent_s = time.time() - t0
    done = 0
    t1 = time.time()
    while nacked and done < count:
        got = call(s.base, "POST", "/v1/topics/t/groups/g/receive", {"max_messages": 1000, "invisible_ms": 600000})["messages"]
        if not got:
            continue
        r = call(s.base, "POST", "/v1/topics/t/groups/g/nack",
                 {"receipt_handles": [m["receipt_handle"] for m in got], "delay_ms": 3_600_000})
        done += r["nacked"]
    nack_s = time.time() - t1
    time.sleep(3)
    stats = call(s.base, "GET", "/v1/timer/stats")
    rss = rss_anon_kb(s.proc.pid)
    restart_s = s.restart()
    rss_after = rss_anon_kb(s.proc.pid)
    pending_after = call(s.base, "GET", "/v1/timer/stats")["pending_total"]
    s.stop()
    du = int(subprocess.run(["du", "-sb", os.path.join(tmp, "data")], capture_output=True, text=True).stdout.split()[0])
    shutil.rmtree(tmp)
    return {"run": "nacked" if nacked else "scheduled", "count": count, "send_s": round(sent_s, 1),
            "nack_s": round(nack_s, 1), "nacks_per_s": round(count / nack_s) if nacked else None,
            "pending": stats["pending_total"], "rss_anon_mb": round(rss / 1024, 1),
            "restart_to_ready_s": round(restart_s, 2), "rss_anon_after_restart_mb": round(rss_after / 1024, 1),
            "pending_after_restart": pending_after, "data_dir_mb": round(du / 1e6, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--count", type=int, default=1_000_000)
    a = p.parse_args()
    for nacked in (False, True):
        print(json.dumps(run(a.binary, a.count, nacked)), flush=True)


if __name__ == "__main__":
    main()

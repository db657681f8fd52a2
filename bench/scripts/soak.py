#!/usr/bin/env python3
"""Storage-lifecycle soak (issue 14): steady normal + scheduled load against a chime binary with
small segments and a short retention; prints disk use per interval, and the ingest rate.

    python3 bench/scripts/soak.py target/release/chime --minutes 10 --retention 60s
    python3 bench/scripts/soak.py target/release/chime --pairs 2 --minutes 1.5   # A/B rate

Load: SENDERS threads send batches of 100 messages: 90 normal (1 KiB bodies) and 10 scheduled
one year ahead (256 B bodies); one consumer receives and acks everything that is visible.
Every --every seconds a row: elapsed, messages sent, rate over the interval, data directory
size (du), commit-log bytes, pending scheduled messages, reclaimed segments, carried forward.

--pairs N instead runs N pairs of runs, alternating retention off (3650d) and on (--retention)
for --minutes each, and prints the ingest rate of each and the ratio on/off (the machine's
drift cancels out in the alternation).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

SENDERS = 3
YEAR_MS = 364 * 86_400_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class Run:
    def __init__(self, binary, retention, segment):
        self.dir = tempfile.mkdtemp(prefix="chime-soak-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({
            "CHIME_LISTEN": f"127.0.0.1:{self.port}",
            "CHIME_DATA_DIR": os.path.join(self.dir, "data"),
            "CHIME_STORE_SEGMENT_SIZE": segment,
            "CHIME_STORE_RETENTION": retention,
            "CHIME_STORE_RETENTION_CHECK_INTERVAL": "1s",
            "CHIME_STORE_CONSUME_QUEUE_SEGMENT_ENTRIES": "100000",
        })
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen([binary], env=env, stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(self.base + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise SystemExit("server not ready")
            time.sleep(0.1)
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = 0

    def sender(self, w):
        s = requests.Session()
        normal = "n" * 1024
        sched = "s" * 256
        i = 0
        while not self.stop.is_set():
            now = int(time.time() * 1000)
            batch = []
            for k in range(100):
                if k % 10 == 0:
                    batch.append({"body": sched, "deliver_at_ms": now + YEAR_MS})
                else:
                    batch.append({"body": normal})
            r = s.post(f"{self.base}/v1/topics/soak/messages", json=batch, timeout=30)
            if r.status_code == 201:
                with self.lock:
                    self.sent += len(batch)
            else:
                self.errors += 1
                time.sleep(0.1)
            i += 1

    def consumer(self):
        s = requests.Session()
        while not self.stop.is_set():
            r = s.post(f"{self.base}/v1/topics/soak/groups/g/receive",
                       json={"max_messages": 1000, "wait_ms": 500}, timeout=30)
            msgs = r.json().get("messages", []) if r.status_code == 200 else []
            if msgs:
                s.post(f"{self.base}/v1/topics/soak/groups/g/ack",
                       json={"receipt_handles": [m["receipt_handle"] for m in msgs]}, timeout=30)

    def storage(self):
        return requests.get(self.base + "/v1/storage", timeout=10).json()

    def stats(self):
        return requests.get(self.base + "/v1/timer/stats", timeout=10).json()

    def go(self, seconds, every, rows):
        threads = [threading.Thread(target=self.sender, args=(w,), daemon=True) for w in range(SENDERS)]
        threads.append(threading.Thread(target=self.consumer, daemon=True))
        for t in threads:
            t.start()
        t0 = time.time()
        last_t, last_n = t0, 0
        while time.time() - t0 < seconds:
            time.sleep(min(every, max(0.0, seconds - (time.time() - t0))))
            now = time.time()
            with self.lock:
                n = self.sent
            if rows is not None:
                st = self.storage()
                rows.append({
                    "t": round(now - t0),
                    "sent": n,
                    "rate": round((n - last_n) / (now - last_t)),
                    "du_mb": round(du(os.path.join(self.dir, "data")) / 1e6, 1),
                    "log_mb": round(st["commitlog"]["bytes"] / 1e6, 1),
                    "timer_mb": round(du(os.path.join(self.dir, "data", "timer")) / 1e6, 1),
                    "index_mb": round(du(os.path.join(self.dir, "data", "consumequeue")) / 1e6, 1),
                    "pending": self.stats()["pending_total"],
                    "reclaimed": st["reclaimed"]["segments"],
                    "carried": st["carried_forward"],
                })
                print(json.dumps(rows[-1]), flush=True)
            last_t, last_n = now, n
        self.stop.set()
        for t in threads:
            t.join(timeout=60)
        with self.lock:
            return self.sent / (time.time() - t0)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--retention", default="60s")
    p.add_argument("--segment", default="8MiB")
    p.add_argument("--every", type=float, default=30)
    p.add_argument("--pairs", type=int, default=0)
    a = p.parse_args()
    if a.pairs:
        ratios = []
        for i in range(a.pairs):
            rates = {}
            order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
            for mode in order:
                r = Run(a.binary, a.retention if mode == "on" else "3650d", a.segment)
                try:
                    rates[mode] = r.go(a.minutes * 60, a.every, None)
                finally:
                    r.close()
                print(f"pair {i + 1} retention {mode}: {rates[mode]:.0f} msgs/s", flush=True)
            ratios.append(rates["on"] / rates["off"])
            print(f"pair {i + 1}: on/off {ratios[-1]:.3f}", flush=True)
        print(json.dumps({"ratios_on_off": [round(x, 3) for x in ratios]}))
        return
    r = Run(a.binary, a.retention, a.segment)
    rows = []
    try:
        rate = r.go(a.minutes * 60, a.every, rows)
    finally:
        r.close()
    print(json.dumps({"rate": round(rate), "errors": r.errors}))
    print("| t (s) | sent | msgs/s | data dir MB | log MB | index MB | timer MB | pending | reclaimed segs | carried |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['t']} | {x['sent']} | {x['rate']} | {x['du_mb']} | {x['log_mb']} | {x['index_mb']} | {x['timer_mb']} | {x['pending']} | {x['reclaimed']} | {x['carried']} |")


if __name__ == "__main__":
    sys.exit(main())

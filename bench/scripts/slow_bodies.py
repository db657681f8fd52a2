#!/usr/bin/env python3
"""Issue 11, item 3: four connections declare a 16 MiB body and send one byte; then one client
sends 195 small messages one after another. Prints how many were stored and how many got 429.

    python3 bench/scripts/slow_bodies.py path/to/chime [path/to/other/chime ...]

Each binary is started with its default profile on 127.0.0.1:18099 and a fresh data directory.
"""
import socket,subprocess,time,json,sys,tempfile,urllib.request,os
def run(binary):
    d=tempfile.mkdtemp(dir="/tmp")
    env=dict(os.environ, CHIME_LISTEN="127.0.0.1:18099", CHIME_DATA_DIR=d+"/data")
    p=subprocess.Popen([binary],env=env,stdout=subprocess.DEVNULL,stderr=open(d+"/err","w"))
    base="http://127.0.0.1:18099"
    for _ in range(200):
        try:
            urllib.request.urlopen(base+"/readyz"); break
        except Exception: time.sleep(0.05)
    slow=[]
    for i in range(4):
        s=socket.create_connection(("127.0.0.1",18099))
        s.sendall(b"POST /v1/topics/slow/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16777216\r\n\r\n[")
        slow.append(s)
    time.sleep(0.3)
    ok=busy=0
    t=time.time()
    for i in range(195):
        req=urllib.request.Request(base+"/v1/topics/fast/messages",data=json.dumps({"body":"m%d"%i}).encode(),headers={"Content-Type":"application/json"},method="POST")
        try:
            urllib.request.urlopen(req); ok+=1
        except urllib.error.HTTPError as e:
            if e.code==429: busy+=1
    el=time.time()-t
    p.terminate(); p.wait()
    print(f"{binary}: 4 slow 16 MiB bodies; 195 sends: {ok} stored, {busy} refused 429 ({el:.2f} s)")
for b in sys.argv[1:]: run(b)

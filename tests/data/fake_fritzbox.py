"""A FRITZ!Box as far as discovery sees it: an SSDP responder and the box's description documents.

    python fake_fritzbox.py IP FIXTURE_DIR      (run inside a test namespace; stopped by its pid)

Answers M-SEARCH for TR-064 / the fritzbox device type / rootdevice / ssdp:all with the LOCATION of
tr64desc.xml, and serves FIXTURE_DIR (../shared/fixtures/fritzbox/FRITZBox_7530_164.08.02) over HTTP
on IP:49000, as the box does. Prints "ready" once both listen.
"""

import functools
import http.server
import socket
import struct
import sys
import threading

ip, root = sys.argv[1], sys.argv[2]
PORT = 49000
TARGETS = {"ssdp:all", "upnp:rootdevice", "urn:dslforum-org:device:InternetGatewayDevice:1",
           "urn:schemas-upnp-org:device:fritzbox:1"}


class Quiet(http.server.SimpleHTTPRequestHandler):
    server_version = "AVM FRITZ!Box"
    sys_version = ""

    def log_message(self, fmt, *args):
        sys.stdout.write("http: " + (fmt % args) + "\n")
        sys.stdout.flush()


httpd = http.server.ThreadingHTTPServer((ip, PORT), functools.partial(Quiet, directory=root))
threading.Thread(target=httpd.serve_forever, daemon=True).start()

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("239.255.255.250", 1900))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("239.255.255.250"), socket.inet_aton(ip)))
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out.bind((ip, 0))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    text = data.decode("utf-8", "replace")
    if not text.startswith("M-SEARCH"):
        continue
    st = next((line.split(":", 1)[1].strip() for line in text.split("\r\n") if line.lower().startswith("st:")), "")
    if st not in TARGETS:
        continue
    answer_st = st if st != "ssdp:all" else "urn:dslforum-org:device:InternetGatewayDevice:1"
    reply = ("HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\n"
             f"LOCATION: http://{ip}:{PORT}/tr64desc.xml\r\n"
             "SERVER: FRITZ!Box 7530 UPnP/1.0 AVM FRITZ!Box 7530 164.08.02\r\n"
             f"ST: {answer_st}\r\nUSN: uuid:11223344-aabb-ccdd-eeff-112233445566::{answer_st}\r\n\r\n")
    out.sendto(reply.encode(), addr)
    print(f"ssdp: answered {addr[0]} for {st}", flush=True)

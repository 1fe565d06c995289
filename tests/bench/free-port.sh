# Sourced by the bench scripts. `free_port [PORT...]` prints a free loopback
# port (TCP and UDP) other than the PORTs given, taken below the kernel's
# ephemeral range, so that no outgoing connection can take it as its source port
# before the server the script starts binds it.
free_port() {
  python3 - "$@" <<'PY'
import random, socket, sys
avoid = {int(p) for p in sys.argv[1:]}
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
if low < 13024:
    low = 32768
ports = [p for p in range(low - 12000, low) if p not in avoid]
random.shuffle(ports)
for p in ports:
    try:
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", p))
            u.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(p)
    break
else:
    sys.exit("no free loopback port")
PY
}

"""The driver interface and the phones' SIP NOTIFY driver (sipp plays the phone, test-peers.md §6)."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time

import pytest

from conftest import REPO, free_port, need
from provisioner.drivers import get_driver
from provisioner.drivers.base import (WRITE_ONLY, ActionFailed, AuthenticationFailed, Driver, NotSupported,
                                      Unreachable, Verifier, compare_states, show)
from provisioner.drivers.pins import TlsPins
from provisioner.drivers.ssh_router import ShadowHash, parse_uci, uci_quote
from provisioner.drivers import unixcrypt
from provisioner.secret import MASK, Secret
from provisioner.vendors import load_catalog

NOTIFY_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="NOTIFY UAS (fake phone)">
  <recv request="NOTIFY" crlf="true">
    <action>
      <ereg regexp="Event: *([^;\\r\\n]*)" search_in="msg" check_it="true" assign_to="evline,event"/>
      <log message="got NOTIFY [$evline] event=[$event]"/>
    </action>
  </recv>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:phone@[local_ip]:[local_port]>
      Content-Length: 0

  ]]></send>
  <timewait milliseconds="200"/>
</scenario>
"""


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(REPO / "vendors", REPO / "templates")


def _udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_sip_notify_resync_and_reboot_reach_a_sipp_phone(catalog, tmp_path):
    need("sipp")
    from provisioner.drivers.sip_notify import SipNotifyDriver
    scen = tmp_path / "notify_uas.xml"
    scen.write_text(NOTIFY_UAS)
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(["sipp", "-sf", str(scen), "-i", "127.0.0.1", "-p", str(port), "-m", "2", "-nostdin",
                             "-trace_msg", "-message_file", str(tmp_path / "msg.log"), "-trace_logs", "-log_file",
                             str(tmp_path / "actions.log")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _udp_bound(port):
            assert proc.poll() is None and time.monotonic() < deadline, "sipp did not start"
            time.sleep(0.05)
        phone = SipNotifyDriver(catalog.get("yealink"), "127.0.0.1", port, mac="805ec0123456", timeout=5)
        assert phone.capabilities_now == {"resync", "reboot"}
        phone.resync()
        assert phone.last_response == "200 OK"
        phone.reboot()
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    msgs = (tmp_path / "msg.log").read_text()
    assert "Event: check-sync;reboot=false" in msgs and "Event: check-sync;reboot=true" in msgs
    assert "got NOTIFY Event: check-sync event=check-sync" in (tmp_path / "actions.log").read_text()


class ChallengingPhone:
    """sipp as a Cisco SPA with Auth_Resync-Reboot: 401 with a Digest challenge to the first NOTIFY, then
    sipp's own verifyauth checks the retry's Authorization against the line user and password it was given
    (on its command line only); 200 if it verifies, 403 if not (tests/kamailio/notify_auth_uas.xml)."""

    def __init__(self, tmp: Path, user: str, password: Secret):
        need("sipp")
        self.port = free_port(socket.SOCK_DGRAM)
        self.log = tmp / f"auth-{self.port}.log"
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(REPO / "tests" / "kamailio" / "notify_auth_uas.xml"), "-i", "127.0.0.1", "-p",
             str(self.port), "-m", "1", "-set", "user", user, "-set", "pw", password.reveal(), "-nostdin",
             "-trace_msg", "-message_file", str(tmp / f"auth-msg-{self.port}.log"), "-trace_logs", "-log_file",
             str(self.log), "-timeout", "30s", "-timeout_error"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _udp_bound(self.port):
            assert self.proc.poll() is None and time.monotonic() < deadline, "sipp did not start"
            time.sleep(0.05)

    def verified(self) -> bool:
        """sipp's verifyauth accepted the retried NOTIFY's Authorization."""
        self.proc.wait(timeout=15)
        return "auth=true" in self.log.read_text()

    def messages(self) -> str:
        return self.log.with_name(self.log.name.replace("auth-", "auth-msg-")).read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("action", ["resync", "reboot"])
def test_sip_notify_answers_a_cisco_digest_challenge_with_the_line_credentials(catalog, tmp_path, action):
    from provisioner.drivers.sip_notify import SipNotifyDriver
    password = Secret("Line-1-Pass-7xQ2")
    phone = ChallengingPhone(tmp_path, "201a", password)
    try:
        drv = SipNotifyDriver(catalog.get("cisco"), "127.0.0.1", phone.port, user="201", timeout=5,
                              credentials=[("201a", password)])
        getattr(drv, action)()
        assert drv.last_response == "200 OK" and phone.verified()
        msgs = phone.messages()
        event = catalog.get("cisco").sip_notify.resync if action == "resync" else catalog.get("cisco").sip_notify.reboot
        assert f"Event: {event}" in msgs and 'Authorization: Digest username="201a", realm="spa"' in msgs
        assert "CSeq: 2 NOTIFY" in msgs and password.reveal() not in msgs  # only its digest travels
    finally:
        phone.stop()


def test_sip_notify_with_the_wrong_line_password_is_refused_and_says_so(catalog, tmp_path):
    from provisioner.drivers.sip_notify import SipNotifyDriver
    phone = ChallengingPhone(tmp_path, "201", Secret("What-The-Phone-Holds-1"))
    try:
        drv = SipNotifyDriver(catalog.get("cisco"), "127.0.0.1", phone.port, user="201", timeout=5,
                              credentials=[("201", Secret("Another-Generation-2"))])
        with pytest.raises(ActionFailed, match="refused to fetch its configuration: 403") as e:
            drv.resync()
        assert not phone.verified() and "Another-Generation" not in str(e.value)
    finally:
        phone.stop()


def test_reprovision_notifies_a_challenging_cisco_with_the_credentials_it_holds(tmp_path):
    """During a rotation the phone still holds the active generation: the NOTIFY answers its challenge with
    line 1's auth user and active SIP password (operations.notify_credentials), and the phone acts."""
    from provisioner.operations import reprovision, sync_inventory
    from provisioner.runtime import Runtime
    inv = tmp_path / "inventory.yaml"
    inv.write_text((REPO / "inventory.yaml").read_text().split("devices:")[0] + """devices:
  - mac: 00:02:fd:12:34:56
    vendor: cisco
    model: SPA504G
    site: lab
    lines:
      - {extension: "201", display_name: Accueil, auth_user: "201a"}
""")
    rt = Runtime(home=tmp_path / "home", inventory_path=inv)
    sync_inventory(rt)
    active = rt.store.credentials("0002fd123456", "active")["sip:201"]
    phone = ChallengingPhone(tmp_path, "201a", active)
    try:
        res = reprovision(rt, "0002fd123456", "test", contact=f"127.0.0.1:{phone.port}", notify_timeout=5,
                          sync=False)
        assert res.notified and "200 OK" in res.notify and phone.verified()
    finally:
        phone.stop()


def test_sip_notify_reset_without_event_says_what_to_do(catalog):
    from provisioner.drivers.sip_notify import SipNotifyDriver
    phone = SipNotifyDriver(catalog.get("yealink"), "127.0.0.1", 5060)
    with pytest.raises(NotSupported) as e:
        phone.factory_reset()
    assert "has no SIP NOTIFY to reset to factory settings" in str(e.value)
    assert "Hold the OK key" in str(e.value) and e.value.exit_code == 2


def test_sip_notify_timeouts_are_bounded_and_clear(catalog):
    from provisioner.drivers.sip_notify import SipNotifyDriver
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:  # a phone that never answers
        mute.bind(("127.0.0.1", 0))
        t = time.monotonic()
        with pytest.raises(Unreachable) as e:
            SipNotifyDriver(catalog.get("yealink"), "127.0.0.1", mute.getsockname()[1], timeout=0.6).resync()
        assert time.monotonic() - t < 2
        assert "no answer to NOTIFY (Event: check-sync;reboot=false) within 0.6 s" in str(e.value)
        assert mute.recv(2048).startswith(b"NOTIFY sip:phone@127.0.0.1:")
    with pytest.raises(Unreachable, match="nothing listens for SIP"):
        SipNotifyDriver(catalog.get("yealink"), "127.0.0.1", free_port(socket.SOCK_DGRAM), timeout=0.6).resync()


def _answering(code: str):
    """A phone that answers every NOTIFY with `code` (100 Trying first)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)

    def run():
        try:
            data, addr = s.recvfrom(4096)
        except OSError:
            return
        head = data.decode().split("\r\n")
        keep = [h for h in head if h.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        for status in ("100 Trying", code):
            s.sendto(("SIP/2.0 " + status + "\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode(),
                     addr)
    threading.Thread(target=run, daemon=True).start()
    return s


def test_sip_notify_refusals(catalog):
    from provisioner.drivers.sip_notify import SipNotifyDriver
    with _answering("489 Bad Event") as s:
        with pytest.raises(ActionFailed, match="refused to fetch its configuration: 489 Bad Event"):
            SipNotifyDriver(catalog.get("yealink"), "127.0.0.1", s.getsockname()[1], timeout=3).resync()
    with _answering("401 Unauthorized") as s:
        with pytest.raises(AuthenticationFailed, match="asked for authentication"):
            SipNotifyDriver(catalog.get("yealink"), "127.0.0.1", s.getsockname()[1], timeout=3).reboot()


# ---- the interface -------------------------------------------------------------------------------------

def test_get_driver_and_capabilities():
    assert get_driver("fritzbox").__name__ == "FritzBoxDriver"
    assert {"trunk", "registrar", "config_password", "factory_reset"} <= get_driver("fritzbox").capabilities
    assert {"push", "read_back", "admin_password"} <= get_driver("ssh_router").capabilities
    assert get_driver("sip_notify").capabilities == {"resync", "reboot", "factory_reset"}
    for name in ("fritzbox", "ssh_router", "sip_notify"):
        assert issubclass(get_driver(name), Driver)
    with pytest.raises(KeyError, match="unknown driver 'junos'"):
        get_driver("junos")


def test_a_driver_says_what_it_cannot_do():
    class Minimal(Driver):
        name = "minimal"

        def facts(self):
            return {}
    d = Minimal()
    for call in (lambda: d.push({}), d.read_back, d.reboot, d.factory_reset, d.resync, lambda: d.compare({})):
        with pytest.raises(NotSupported, match="minimal cannot"):
            call()


class _Hash(Verifier):
    def __init__(self, value):
        self.value = value

    def matches(self, secret):
        return secret.reveal() == self.value


def test_compare_states_masks_and_classifies():
    expected = {"a": "1", "pw": Secret("s3cret-value"), "h": Secret("other-value"), "wo": Secret("x-value"),
                "gone": "here"}
    actual = {"a": "2", "pw": "s3cret-value", "h": _Hash("nope"), "wo": WRITE_ONLY, "mine[1].x": "v",
              "mine[1].y": "w", "theirs": "z"}
    drift = {d.key: d for d in compare_states(expected, actual, owned=lambda k: k.startswith("mine"))}
    assert set(drift) == {"a", "h", "wo", "gone", "mine[1]"}
    assert (drift["a"].kind, drift["a"].expected, drift["a"].actual) == ("differs", "1", "2")
    assert (drift["h"].kind, drift["h"].expected, drift["h"].actual) == ("differs", MASK, "hash")
    assert drift["wo"].kind == "unverifiable" and not drift["wo"].counts
    assert drift["gone"].kind == "missing" and drift["mine[1]"].kind == "unexpected"
    assert "s3cret" not in repr(list(drift.values())) and show(Secret("x")) == MASK


def test_crypt_hashes_match_openssl():
    need("openssl")
    for alg, prefix in (("-1", "$1$"), ("-5", "$5$"), ("-6", "$6$")):
        for pw in ("a", "Password-With-24-chars!!", "x" * 70):
            h = subprocess.run(["openssl", "passwd", alg, "-stdin"], input=pw, capture_output=True, text=True,
                               check=True, timeout=10).stdout.strip()
            assert h.startswith(prefix) and unixcrypt.verify(pw, h) and not unixcrypt.verify(pw + "x", h)
            assert ShadowHash(h).matches(Secret(pw))
    assert not unixcrypt.verify("", "!") and not unixcrypt.verify("x", "") and ShadowHash("!").describe() == \
        "locked account"


def test_uci_quote_and_parse():
    text = "config system\n\toption hostname " + uci_quote("it's") + "\n\tlist server " + uci_quote("a b") + "\n"
    sections = parse_uci(text)
    assert sections == [{"type": "system", "name": None, "options": {"hostname": "it's"}, "lists": {"server": ["a b"]}}]
    with pytest.raises(ValueError, match="control character"):
        uci_quote("a\nb")
    with pytest.raises(ValueError, match="line 2"):
        parse_uci("config x\nhostname foo\n")


def test_tls_pins_file(tmp_path):
    pins = TlsPins(tmp_path)
    assert pins.get("10.0.0.1", 49443) is None
    pins.set("10.0.0.1", 49443, "AB" * 32)
    pins.set("fe80::1", 49443, "cd" * 32)
    assert TlsPins(tmp_path).get("10.0.0.1", 49443) == "ab" * 32
    assert "[fe80::1]:49443" in (tmp_path / "routers" / "tls_pins").read_text()
    assert oct((tmp_path / "routers" / "tls_pins").stat().st_mode & 0o777) == "0o600"
    assert pins.forget("10.0.0.1", 49443) and not pins.forget("10.0.0.1", 49443)


def test_driver_objects_hold_no_plaintext_in_reprs(tmp_path):
    from provisioner.drivers.fritzbox import FritzBoxDriver
    from provisioner.drivers.ssh_router import SshRouterDriver
    pw = Secret("Plain-Text-Password-42")
    for d in (FritzBoxDriver("127.0.0.1", "u", [pw], home=tmp_path),
              SshRouterDriver("127.0.0.1", "u", [pw], home=tmp_path)):
        assert "Plain-Text" not in repr(vars(d)) and "Plain-Text" not in str(d)
    assert re.match(r"^Secret\(\*+\)$", repr(pw))

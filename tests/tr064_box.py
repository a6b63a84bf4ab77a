"""A TR-064 test box: the real FRITZ!OS descriptions, HTTP digest auth, and the actions the driver uses.

    box = TR064Box("8.02").start()   # or "7.57"; serves on 127.0.0.1 (HTTP + HTTPS, free ports)

- Serves tr64desc.xml and the SCPDs of a real box from tests/data/fritzbox/, a copy of
  ../shared/fixtures/fritzbox/ (FRITZ!Box 7530 on FRITZ!OS 8.02, 7590 on 7.57; gofritz, MIT), with the
  presentation URL rewritten to this server. The fixtures lack a few WAN SCPDs the description names: those are served as SCPDs without actions, so the
  real fritzconnection client loads the description as from a box. igddesc.xml answers 404 (text/html),
  as fritzconnection expects from a box without it.
- /upnp/control/*: HTTP digest (MD5, qop=auth); a wrong login gets an HTML 401 page, as from a box.
- Every call is checked against the real SCPD: an action the service does not list is 401 Invalid Action,
  arguments that are not exactly the action's in-arguments are 402 Invalid Args (and recorded in
  `violations`), and an implementation answering an out-argument the SCPD does not name is recorded in
  `violations` too (tests assert it stays empty).
- State in memory: VoIP accounts, IP-phone clients, the config password, users. The box's character
  rules (GetInfoEx, LANConfigSecurity GetInfo) are enforced on every write (801 too short, 802 too long,
  803 invalid characters). The rule *values* are this test box's choice: no real box's GetInfoEx answer
  was available.
- Older FRITZ!OS: the variants "7.57-old" and "7.57-no-setclient4" are *derived* from the real 7.57
  descriptions by removing what `drop` names (an out-argument, an action), to model a FRITZ!OS generation
  before those were added; which release added them is not verified, only that AVM added them over time.
- Numbers: X_AVM-DE_GetNumbers answers AVM's number list (`<List><Item><Number/><Type/><Index/><Name/></Item>
  </List>`, format as in blacksenator/fritzsoap src/x_voip.php, citing AVM's x_voipSCPD) built from the
  VoIP accounts (eVoIP, Index = account index) and `other_numbers`; SetClient4's InComingNumbers must be
  empty or such a list whose items are the box's own numbers (else 402, recorded in `violations`).
- `keeps_client_id = False` models a box that drops the ClientId a client was written with;
  `refuse_actions` answers 401 Invalid Action to actions the description lists.
- Second factor: actions in `second_factor_actions` answer 866 until an X_AVM-DE_Auth session (SetConfig
  start → token) is "authenticated" by `confirm()` (the technician pressing the button) and the call
  carries its token in the `<avm:token>` SOAP header.
- `calls` logs (service, action) of every SOAP call (never an argument value).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import secrets
import shutil
import ssl
import string
import tempfile
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "data" / "fritzbox"  # copied from ../shared/fixtures/fritzbox (MIT)
DEV_NS = "urn:dslforum-org:device-1-0"
SVC_NS = "urn:dslforum-org:service-1-0"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
REALM = "F!Box SOAP-Auth"
ALNUM = string.ascii_letters + string.digits
PRINTABLE = ALNUM + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ "
EMPTY_SCPD = (f'<?xml version="1.0"?>\n<scpd xmlns="{SVC_NS}"><specVersion><major>1</major><minor>0</minor>'
              f'</specVersion><actionList></actionList><serviceStateTable></serviceStateTable></scpd>\n')
HTML_401 = (b'<HTML><HEAD><TITLE>401 Unauthorized (ERR_NONE)</TITLE></HEAD><BODY><H1>401 Unauthorized</H1>'
            b'<BR>ERR_NONE<HR><B>Webserver</B></BODY></HTML>\n')

# per firmware: (min, max, allowed characters) of what the box takes
VARIANTS = {
    "8.02": {"dir": "FRITZBox_7530_164.08.02", "client_password": (8, 32, ALNUM),
             "client_username": (3, 32, ALNUM + "-_."), "config_password": (8, 32, PRINTABLE),
             "trunk_password": (0, 128, PRINTABLE), "trunk_username": (0, 128, PRINTABLE),
             "voip_password_readable": True},
    "7.57": {"dir": "FRITZBox_7590_154.07.57", "client_password": (8, 20, ALNUM + "!#%*+-._"),
             "client_username": (3, 20, ALNUM + "-_."), "config_password": (12, 32, ALNUM + "$%&()*+,-./:;?@[]^_"),
             "trunk_password": (0, 64, PRINTABLE), "trunk_username": (0, 64, PRINTABLE),
             "voip_password_readable": False},
}
# derived descriptions (see the module text): the 7.57 files minus what `drop` names, per SCPD file
VARIANTS["7.57-old"] = {**VARIANTS["7.57"], "drop": {
    "lanconfigsecuritySCPD.xml": {"outs": {"GetInfo": ["NewX_AVM-DE_IsDefaultPasswordActive"]}}}}
VARIANTS["7.57-no-setclient4"] = {**VARIANTS["7.57"], "drop": {
    "lanconfigsecuritySCPD.xml": {"outs": {"GetInfo": ["NewX_AVM-DE_IsDefaultPasswordActive"]}},
    "x_voipSCPD.xml": {"actions": ["X_AVM-DE_SetClient4", "X_AVM-DE_GetNumbers"]}}}


class Fault(Exception):
    def __init__(self, code: int, desc: str):
        super().__init__(f"{code} {desc}")
        self.code, self.desc = code, desc


@dataclass
class Action:
    ins: list[str]
    outs: list[str]


@dataclass
class Service:
    service_type: str
    short: str  # X_VoIP, DeviceInfo, ...
    control: str
    scpd: str
    actions: dict[str, Action] = field(default_factory=dict)


def _tls_material(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fritz.box")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    tag = uuid.uuid4().hex[:8]
    c, k = directory / f"cert-{tag}.pem", directory / f"key-{tag}.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


class TR064Box:
    FACTORY_USER = "fritz4711"

    def __init__(self, firmware: str = "8.02", users: dict[str, str] | None = None, tls: bool = True,
                 second_factor_actions: set[str] | None = None, mac: str = "3C:A6:2F:11:22:33"):
        v = VARIANTS[firmware]
        self.firmware, self.variant, self.root = firmware, v, FIXTURES / v["dir"]
        self.mac = mac
        self.factory_password = "Sticker" + secrets.token_hex(4)
        self.users: dict[str, str] = {self.FACTORY_USER: self.factory_password, **(users or {})}
        self.readonly_users: set[str] = set()
        self.tls = tls
        self.second_factor_actions = set(second_factor_actions or ())
        self.keeps_client_id = True
        self.refuse_actions: set[str] = set()
        self.methods = "button,dtmf;*1234"
        self.lock = threading.RLock()
        self.calls: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self.reboots = self.resets = 0
        self.auth_sessions: dict[str, str] = {}  # token -> state
        self._nonces: set[str] = set()
        self._factory_state()
        self._load_descriptions()
        self._servers: list[ThreadingHTTPServer] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="tr064box-"))
        self.port = self.tls_port = 0

    def _factory_state(self) -> None:
        self.accounts: dict[int, dict] = {}
        self.clients: list[dict] = []
        self.config_password = self.factory_password
        self.default_password_active = True
        self.max_accounts = 20
        self.other_numbers: list[dict] = []  # numbers of other lines (POTS, ISDN, ...): {Number, Type, Index, Name}

    # ---- descriptions ----------------------------------------------------------------------------
    def _load_descriptions(self) -> None:
        self.tr64desc = (self.root / "tr64desc.xml").read_text()
        tree = ET.fromstring(self.tr64desc)
        self.services: dict[str, Service] = {}
        self.by_control: dict[str, list[Service]] = {}
        for s in tree.iter(f"{{{DEV_NS}}}service"):
            st = s.findtext(f"{{{DEV_NS}}}serviceType")
            svc = Service(st, st.split(":")[-2], s.findtext(f"{{{DEV_NS}}}controlURL"),
                          s.findtext(f"{{{DEV_NS}}}SCPDURL"))
            path = self.root / svc.scpd.lstrip("/")
            if path.exists():
                scpd = ET.fromstring(self.scpd_bytes(path.name))
                for a in scpd.iter(f"{{{SVC_NS}}}action"):
                    ins, outs = [], []
                    for arg in a.iter(f"{{{SVC_NS}}}argument"):
                        (ins if arg.findtext(f"{{{SVC_NS}}}direction") == "in" else outs).append(
                            arg.findtext(f"{{{SVC_NS}}}name"))
                    svc.actions[a.findtext(f"{{{SVC_NS}}}name")] = Action(ins, outs)
            self.services[st] = svc
            self.by_control.setdefault(svc.control, []).append(svc)
        disp = tree.find(f"{{{DEV_NS}}}systemVersion/{{{DEV_NS}}}Display")
        self.display_version = disp.text if disp is not None else "?"
        self.model = tree.findtext(f".//{{{DEV_NS}}}modelName")

    def scpd_bytes(self, name: str) -> bytes:
        """An SCPD as this box serves it: the real file, minus what a derived variant drops."""
        raw = (self.root / name).read_bytes()
        drop = self.variant.get("drop", {}).get(name)
        if not drop:
            return raw
        ET.register_namespace("", SVC_NS)
        tree = ET.fromstring(raw)
        actions = tree.find(f"{{{SVC_NS}}}actionList")
        for a in list(actions):
            aname = a.findtext(f"{{{SVC_NS}}}name")
            if aname in drop.get("actions", ()):
                actions.remove(a)
                continue
            args = a.find(f"{{{SVC_NS}}}argumentList")
            for arg in list(args) if args is not None else ():
                if arg.findtext(f"{{{SVC_NS}}}name") in drop.get("outs", {}).get(aname, ()):
                    args.remove(arg)
        return b'<?xml version="1.0"?>\n' + ET.tostring(tree)

    def has_action(self, short: str, action: str) -> bool:
        return any(s.short == short and action in s.actions for s in self.services.values())

    # ---- server ----------------------------------------------------------------------------------
    def start(self) -> "TR064Box":
        handler = type("BoxHandler", (_Handler,), {"box": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._servers.append(httpd)
        if self.tls:
            self._start_tls(handler)
        for s in self._servers:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def _start_tls(self, handler, port: int = 0) -> None:
        cert, key = _tls_material(self._tmp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

        class TLSServer(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def finish_request(self, request, client_address):
                try:
                    request.settimeout(5)
                    tls = ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                try:
                    self.RequestHandlerClass(tls, client_address, self)
                except (ssl.SSLError, OSError):
                    pass
                finally:
                    try:
                        tls.close()
                    except OSError:
                        pass

        httpd = TLSServer(("127.0.0.1", port), handler)
        self.tls_port = httpd.server_address[1]
        self._servers.append(httpd)

    def new_certificate(self) -> None:
        """The box shows another TLS certificate (as after a reset, or someone in the middle)."""
        old = self._servers.pop()
        handler = old.RequestHandlerClass
        old.shutdown()
        old.server_close()
        self._start_tls(handler, self.tls_port)
        threading.Thread(target=self._servers[-1].serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop_tls(self) -> None:
        """The TLS port stops answering (someone in the middle offering plain HTTP only)."""
        if self.tls and len(self._servers) > 1:
            old = self._servers.pop()
            old.shutdown()
            old.server_close()

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
        self._servers.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ---- technician ------------------------------------------------------------------------------
    def confirm(self) -> None:
        """Someone pressed the button on the box."""
        with self.lock:
            for token, state in self.auth_sessions.items():
                if state == "waitingforauth":
                    self.auth_sessions[token] = "authenticated"

    def writes(self) -> list[str]:
        return [a for _, a in self.calls if not a.startswith(("Get", "X_AVM-DE_Get"))]

    # ---- digest ------------------------------------------------------------------------------------
    def challenge(self) -> str:
        nonce = secrets.token_hex(8).upper()
        with self.lock:
            self._nonces.add(nonce)
        return f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5, qop="auth"'

    def check_digest(self, header: str | None, method: str) -> str | None:
        if not header or not header.lower().startswith("digest "):
            return None
        params = {}
        for part in _split_params(header[7:]):
            k, _, v = part.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        user, nonce = params.get("username"), params.get("nonce")
        with self.lock:
            pw = self.users.get(user or "")
            known = nonce in self._nonces
        if pw is None or not known or params.get("realm") != REALM:
            return None

        def md5(s: str) -> str:
            return hashlib.md5(s.encode()).hexdigest()
        ha1 = md5(f"{user}:{REALM}:{pw}")
        ha2 = md5(f"{method}:{params.get('uri', '')}")
        if params.get("qop") == "auth":
            want = md5(f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:auth:{ha2}")
        else:
            want = md5(f"{ha1}:{nonce}:{ha2}")
        return user if secrets.compare_digest(want, params.get("response", "")) else None

    # ---- SOAP ----------------------------------------------------------------------------------------
    def dispatch(self, control: str, soapaction: str, body: bytes, user: str) -> tuple[int, bytes]:
        stype, _, action = soapaction.strip('"').partition("#")
        svc = next((s for s in self.by_control.get(control, []) if s.service_type == stype), None)
        if svc is None:
            return _fault(401, "Invalid Action")
        try:
            env = ET.fromstring(body)
        except ET.ParseError:
            return _fault(402, "Invalid Args")
        token = None
        header = env.find(f"{{{SOAP_NS}}}Header")
        if header is not None:
            for el in header:
                if el.tag == "{avm.de}token":
                    token = (el.text or "").strip()
        bodyel = env.find(f"{{{SOAP_NS}}}Body")
        call = bodyel[0] if bodyel is not None and len(bodyel) else None
        if call is None or call.tag != f"{{{stype}}}{action}":
            return _fault(401, "Invalid Action")
        args = {el.tag.split("}")[-1]: (el.text or "") for el in call}
        with self.lock:
            self.calls.append((svc.short, action))
        spec = svc.actions.get(action)
        if spec is None:
            return _fault(401, "Invalid Action")
        if set(args) != set(spec.ins):
            self.violations.append(f"{svc.short}:{action} sent {sorted(args)}, SCPD wants {sorted(spec.ins)}")
            return _fault(402, "Invalid Args")
        impl = getattr(self, f"_{svc.short}__{action}".replace("-", "_"), None)
        if impl is None:
            self.violations.append(f"{svc.short}:{action} is not implemented by the test box")
            return _fault(501, "Action Failed")
        try:
            with self.lock:
                if user in self.readonly_users and not action.startswith(("Get", "X_AVM-DE_Get")):
                    raise Fault(606, "Action not authorized")
                if action in self.refuse_actions:
                    raise Fault(401, "Invalid Action")
                if action in self.second_factor_actions and self.auth_sessions.get(token or "") != "authenticated":
                    raise Fault(866, "second factor authentication required")
                out = impl(args, user=user, token=token) or {}
                dropped = self.variant.get("drop", {}).get(svc.scpd.lstrip("/"), {}).get("outs", {}).get(action, ())
                out = {k: v for k, v in out.items() if k not in dropped}
        except Fault as f:
            return _fault(f.code, f.desc)
        extra = set(out) - set(spec.outs)
        if extra:
            self.violations.append(f"{svc.short}:{action} answered {sorted(extra)}, not in the SCPD")
        parts = "".join(f"<{n}>{html.escape(_text(out.get(n, '')), quote=False)}</{n}>" for n in spec.outs)
        xml = (f'<?xml version="1.0"?>\n<s:Envelope xmlns:s="{SOAP_NS}" '
               f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
               f'<u:{action}Response xmlns:u="{stype}">{parts}</u:{action}Response></s:Body></s:Envelope>')
        return 200, xml.encode()

    def rule(self, name: str) -> tuple[int, int, str]:
        return self.variant[name]

    def _rule(self, name: str, value: str) -> None:
        lo, hi, allowed = self.variant[name]
        if len(value) < lo:
            raise Fault(801, "String too short")
        if len(value) > hi:
            raise Fault(802, "String too long")
        if set(value) - set(allowed):
            raise Fault(803, "Argument contains invalid characters")

    # DeviceInfo
    def _DeviceInfo__GetInfo(self, a, **_):
        return {"NewManufacturerName": "AVM", "NewManufacturerOUI": "00040E", "NewModelName": self.model,
                "NewDescription": f"{self.model} {self.display_version}", "NewProductClass": "AVMFB",
                "NewSerialNumber": self.mac.replace(":", ""), "NewSoftwareVersion": self.display_version,
                "NewHardwareVersion": self.model, "NewSpecVersion": "1.0", "NewProvisioningCode": "",
                "NewUpTime": 4242, "NewDeviceLog": ""}

    def _DeviceInfo__GetSecurityPort(self, a, **_):
        return {"NewSecurityPort": self.tls_port}

    # DeviceConfig
    def _DeviceConfig__Reboot(self, a, **_):
        self.reboots += 1

    def _DeviceConfig__FactoryReset(self, a, **_):
        self.resets += 1
        self._factory_state()
        self.users = {self.FACTORY_USER: self.factory_password}
        self.auth_sessions.clear()

    # LANEthernetInterfaceConfig
    def _LANEthernetInterfaceConfig__GetInfo(self, a, **_):
        return {"NewEnable": True, "NewStatus": "Up", "NewMACAddress": self.mac, "NewMaxBitRate": "Auto",
                "NewDuplexMode": "Auto"}

    # LANConfigSecurity
    def _LANConfigSecurity__GetInfo(self, a, **_):
        lo, hi, allowed = self.variant["config_password"]
        return {"NewMaxCharsPassword": hi, "NewMinCharsPassword": lo, "NewAllowedCharsPassword": allowed,
                "NewAllowedCharsUsername": ALNUM + "-_.", "NewX_AVM-DE_IsDefaultPasswordActive":
                self.default_password_active}

    def _LANConfigSecurity__SetConfigPassword(self, a, **_):
        self._rule("config_password", a["NewPassword"])
        self.config_password = a["NewPassword"]
        self.default_password_active = False

    def _LANConfigSecurity__X_AVM_DE_GetCurrentUser(self, a, user, **_):
        rights = ("<rights><path>BoxAdmin</path><access>readwrite</access><path>Phone</path>"
                  "<access>readwrite</access></rights>")
        return {"NewX_AVM-DE_CurrentUsername": user, "NewX_AVM-DE_CurrentUserRights": rights}

    def _LANConfigSecurity__X_AVM_DE_GetUserList(self, a, user, **_):
        items = "".join(f'<Username last_user="{int(u == user)}">{u}</Username>' for u in self.users)
        return {"NewX_AVM-DE_UserList": f"<List>{items}</List>"}

    # facts
    def _ManagementServer__GetInfo(self, a, **_):
        return {"NewURL": "https://acs.provider.example/", "NewUsername": "cpe", "NewPeriodicInformEnable": True,
                "NewPeriodicInformInterval": 3600, "NewPeriodicInformTime": "0001-01-01T00:00:00",
                "NewParameterKey": "", "NewParameterHash": "", "NewConnectionRequestURL": "",
                "NewConnectionRequestUsername": "", "NewUpgradesManaged": False}

    def _X_AVM_DE_RemoteAccess__GetInfo(self, a, **_):
        return {"NewEnabled": False, "NewPort": "", "NewUsername": "", "NewLetsEncryptEnabled": False,
                "NewLetsEncryptState": ""}

    def _X_AVM_DE_MyFritz__GetInfo(self, a, **_):
        return {"NewEnabled": False, "NewDeviceRegistered": False, "NewDynDNSName": "", "NewPort": 0,
                "NewState": "", "NewEmail": ""}

    def _X_AVM_DE_UPnP__GetInfo(self, a, **_):
        return {"NewEnable": True, "NewUPnPMediaServer": False}

    # X_AVM-DE_Auth
    def _X_AVM_DE_Auth__GetInfo(self, a, **_):
        return {"NewEnabled": bool(self.second_factor_actions)}

    def _X_AVM_DE_Auth__SetConfig(self, a, **_):
        if a["NewAction"] == "start":
            if "waitingforauth" in self.auth_sessions.values():
                raise Fault(868, "second factor authentication busy")
            token = uuid.uuid4().hex.upper()
            self.auth_sessions[token] = "waitingforauth"
            return {"NewState": "waitingforauth", "NewToken": token, "NewMethods": self.methods}
        if a["NewAction"] == "stop":
            for t, s in self.auth_sessions.items():
                if s == "waitingforauth":
                    self.auth_sessions[t] = "stopped"
            return {"NewState": "stopped", "NewToken": "", "NewMethods": ""}
        raise Fault(402, "Invalid Args")

    def _X_AVM_DE_Auth__GetState(self, a, token=None, **_):
        if not token or token not in self.auth_sessions:
            raise Fault(402, "Invalid Args")
        return {"NewState": self.auth_sessions[token]}

    # X_VoIP
    def _X_VoIP__GetInfoEx(self, a, **_):
        out = {}
        for prefix, rule in (("NewVoIPNumber", (1, 32, string.digits + "+#*")),
                             ("NewVoIPRegistrar", (1, 128, ALNUM + ".-:")),
                             ("NewVoIPSTUNServer", (0, 128, ALNUM + ".-:")),
                             ("NewVoIPUsername", self.variant["trunk_username"]),
                             ("NewVoIPPassword", self.variant["trunk_password"]),
                             ("NewX_AVM-DE_ClientUsername", self.variant["client_username"]),
                             ("NewX_AVM-DE_ClientPassword", self.variant["client_password"])):
            out[f"{prefix}MinChars"], out[f"{prefix}MaxChars"], out[f"{prefix}AllowedChars"] = rule
        return out

    def _X_VoIP__GetMaxVoIPNumbers(self, a, **_):
        return {"NewMaxVoIPNumbers": self.max_accounts}

    def _X_VoIP__GetExistingVoIPNumbers(self, a, **_):
        return {"NewExistingVoIPNumbers": len(self.accounts)}

    def _index(self, a, name="NewVoIPAccountIndex") -> int:
        try:
            i = int(a[name])
        except ValueError:
            raise Fault(402, "Invalid Args") from None
        if not 0 <= i < self.max_accounts:
            raise Fault(713, "SpecifiedArrayIndexInvalid")
        return i

    def _X_VoIP__X_AVM_DE_AddVoIPAccount(self, a, **_):
        i = self._index(a)
        self._rule("trunk_username", a["NewVoIPUsername"])
        self._rule("trunk_password", a["NewVoIPPassword"])
        if not a["NewVoIPRegistrar"]:
            raise Fault(402, "Invalid Args")
        self.accounts[i] = dict(a)

    def _X_VoIP__X_AVM_DE_GetVoIPAccount(self, a, **_):
        i = self._index(a)
        if i not in self.accounts:
            raise Fault(713, "SpecifiedArrayIndexInvalid")
        acc = self.accounts[i]
        out = {k: acc[k] for k in ("NewVoIPRegistrar", "NewVoIPNumber", "NewVoIPUsername", "NewVoIPOutboundProxy",
                                    "NewVoIPSTUNServer")}
        out["NewVoIPPassword"] = acc["NewVoIPPassword"] if self.variant["voip_password_readable"] else ""
        out["NewX_AVM-DE_VoIPStatus"] = "registered"
        return out

    def _X_VoIP__X_AVM_DE_DelVoIPAccount(self, a, **_):
        i = self._index(a)
        if self.accounts.pop(i, None) is None:
            raise Fault(713, "SpecifiedArrayIndexInvalid")

    def _X_VoIP__X_AVM_DE_GetVoIPAccounts(self, a, **_):
        items = "".join(f"<Item><AccountIndex>{i}</AccountIndex><Status>registered</Status></Item>"
                        for i in sorted(self.accounts))
        return {"NewX_AVM-DE_VoIPAccountList": f"<List>{items}</List>"}

    def _X_VoIP__X_AVM_DE_GetNumberOfClients(self, a, **_):
        return {"NewX_AVM-DE_NumberOfClients": len(self.clients)}

    def _client(self, a) -> int:
        try:
            i = int(a["NewX_AVM-DE_ClientIndex"])
        except ValueError:
            raise Fault(402, "Invalid Args") from None
        if not 0 <= i < len(self.clients):
            raise Fault(713, "SpecifiedArrayIndexInvalid")
        return i

    def _X_VoIP__X_AVM_DE_GetClient3(self, a, **_):
        c = self.clients[self._client(a)]
        return {"NewX_AVM-DE_ClientUsername": c["username"], "NewX_AVM-DE_ClientRegistrar": "fritz.box",
                "NewX_AVM-DE_ClientRegistrarPort": 5060, "NewX_AVM-DE_PhoneName": c["phone_name"],
                "NewX_AVM-DE_ClientId": c["client_id"], "NewX_AVM-DE_OutGoingNumber": c["outgoing"],
                "NewX_AVM-DE_InComingNumbers": c["incoming"], "NewX_AVM-DE_ExternalRegistration": c["external"],
                "NewX_AVM-DE_InternalNumber": c["internal"], "NewX_AVM-DE_DelayedCallNotification": False}

    def _X_VoIP__X_AVM_DE_SetClient4(self, a, **_):
        try:
            i = int(a["NewX_AVM-DE_ClientIndex"])
        except ValueError:
            raise Fault(402, "Invalid Args") from None
        if not 0 <= i <= len(self.clients):
            raise Fault(713, "SpecifiedArrayIndexInvalid")
        self._rule("client_password", a["NewX_AVM-DE_ClientPassword"])
        self._rule("client_username", a["NewX_AVM-DE_ClientUsername"])
        for j, c in enumerate(self.clients):
            if j != i and c["username"] == a["NewX_AVM-DE_ClientUsername"]:
                raise Fault(820, "Internal Error")  # a user name in use (what a real box says: unverified)
        incoming = a["NewX_AVM-DE_InComingNumbers"]
        if incoming.strip():
            mine = {(n["Number"], n["Type"], str(n["Index"])) for n in self.numbers()}
            try:
                root = ET.fromstring(incoming)
                items = [(i.findtext("Number") or "", i.findtext("Type") or "", i.findtext("Index") or "")
                         for i in root.findall("Item")] if root.tag == "List" else []
            except ET.ParseError:
                items = []
            if not items or any(i not in mine for i in items):
                self.violations.append(f"X_VoIP:X_AVM-DE_SetClient4 InComingNumbers is not a list of the box's own "
                                       f"numbers: {incoming[:200]!r}")
                raise Fault(402, "Invalid Args")
        entry = {"password": a["NewX_AVM-DE_ClientPassword"], "username": a["NewX_AVM-DE_ClientUsername"],
                 "phone_name": a["NewX_AVM-DE_PhoneName"],
                 "client_id": a["NewX_AVM-DE_ClientId"] if self.keeps_client_id else "",
                 "outgoing": a["NewX_AVM-DE_OutGoingNumber"], "incoming": a["NewX_AVM-DE_InComingNumbers"],
                 "external": False}
        if i == len(self.clients):
            used = {c["internal"] for c in self.clients}
            entry["internal"] = next(f"**62{n}" for n in range(10) if f"**62{n}" not in used)
            self.clients.append(entry)
        else:
            entry["internal"] = self.clients[i]["internal"]
            entry["external"] = self.clients[i]["external"]
            self.clients[i] = entry
        return {"NewX_AVM-DE_InternalNumber": entry["internal"]}

    def numbers(self) -> list[dict]:
        out = [{"Number": acc["NewVoIPNumber"], "Type": "eVoIP", "Index": i, "Name": ""}
               for i, acc in sorted(self.accounts.items()) if acc.get("NewVoIPNumber")]
        return out + list(self.other_numbers)

    def _X_VoIP__X_AVM_DE_GetNumberOfNumbers(self, a, **_):
        return {"NewNumberOfNumbers": len(self.numbers())}

    def _X_VoIP__X_AVM_DE_GetNumbers(self, a, **_):
        items = "".join(f"<Item><Number>{html.escape(n['Number'])}</Number><Type>{n['Type']}</Type>"
                        f"<Index>{n['Index']}</Index><Name>{html.escape(n['Name'])}</Name></Item>"
                        for n in self.numbers())
        return {"NewNumberList": f'<?xml version="1.0"?>\n<List>{items}</List>'}

    def _X_VoIP__X_AVM_DE_DeleteClient(self, a, **_):
        del self.clients[self._client(a)]

    def _X_VoIP__X_AVM_DE_GetClients(self, a, **_):
        items = "".join(f"<Item><ClientIndex>{i}</ClientIndex><ClientUsername>{c['username']}</ClientUsername>"
                        f"<ClientId>{c['client_id']}</ClientId></Item>" for i, c in enumerate(self.clients))
        return {"NewX_AVM-DE_ClientList": f"<List>{items}</List>"}


def _text(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _fault(code: int, desc: str) -> tuple[int, bytes]:
    # laid out as a box sends it (fritzconnection reads the text of every node under <detail>)
    xml = (f'<?xml version="1.0"?>\n<s:Envelope xmlns:s="{SOAP_NS}" '
           f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">\n<s:Body>\n<s:Fault>\n'
           f'<faultcode>s:Client</faultcode>\n<faultstring>UPnPError</faultstring>\n<detail>\n'
           f'<UPnPError xmlns="urn:schemas-upnp-org:control-1-0">\n<errorCode>{code}</errorCode>\n'
           f'<errorDescription>{html.escape(desc)}</errorDescription>\n</UPnPError>\n</detail>\n</s:Fault>\n'
           f'</s:Body>\n</s:Envelope>')
    return 500, xml.encode()


def _split_params(text: str) -> list[str]:
    out, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


class _Handler(BaseHTTPRequestHandler):
    box: TR064Box
    protocol_version = "HTTP/1.1"
    server_version = "AVM FRITZ!Box"
    sys_version = ""
    timeout = 10
    wbufsize = 1 << 16  # headers and body in one segment: no Nagle/delayed-ACK stall per request

    def log_message(self, *args) -> None:
        return None

    def _send(self, code: int, body: bytes, ctype: str = 'text/xml; charset="utf-8"',
              headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        box = self.box
        path = self.path.split("?", 1)[0]
        if path == "/tr64desc.xml":
            text = box.tr64desc.replace("<presentationURL>http://192.168.178.1</presentationURL>",
                                        f"<presentationURL>http://127.0.0.1:{box.port}</presentationURL>")
            return self._send(200, text.encode(), "text/xml")
        name = path.lstrip("/")
        if name.endswith("SCPD.xml") and "/" not in name:
            f = box.root / name
            if f.is_file():
                return self._send(200, box.scpd_bytes(name), "text/xml")
            if any(s.scpd == path for s in box.services.values()):
                return self._send(200, EMPTY_SCPD.encode(), "text/xml")
        self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")

    def do_POST(self) -> None:
        box = self.box
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20))
        if not self.path.startswith("/upnp/control/"):
            return self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")
        user = box.check_digest(self.headers.get("Authorization"), "POST")
        if user is None:
            return self._send(401, HTML_401, "text/html", {"WWW-Authenticate": box.challenge()})
        code, out = box.dispatch(self.path, self.headers.get("SOAPAction", ""), body, user)
        self._send(code, out)


if __name__ == "__main__":  # python tests/tr064_box.py 8.02 : a box to explore with the fritzconnection CLI
    import sys
    import time
    b = TR064Box(sys.argv[1] if len(sys.argv) > 1 else "8.02", users={"provisioner": "Test-Pass-1234"}).start()
    print(f"http://127.0.0.1:{b.port} https://127.0.0.1:{b.tls_port} user provisioner", flush=True)
    while True:
        time.sleep(3600)

"""AVM FRITZ!Box over TR-064, through fritzconnection (no hand-written SOAP).

- Transport: TLS on the box's security port (49443) where it answers, with the certificate pinned on first
  contact (fritzconnection itself sends verify=False: a pinned adapter is mounted on its session before it
  loads the descriptions, and any later certificate change is refused); plain HTTP 49000 only where the
  box has no TLS and never after TLS was once seen (`tls: auto`), or never (`tls: required`).
- Login: HTTP digest as a dedicated user (not the box's admin).
- SIP trunks (the box's own VoIP accounts): X_VoIP X_AVM-DE_AddVoIPAccount (AVM has no Set: Add overwrites
  by index), X_AVM-DE_GetVoIPAccount, X_AVM-DE_DelVoIPAccount.
- The box as registrar: one IP-phone client per handset line, X_AVM-DE_GetNumberOfClients /
  X_AVM-DE_GetClient3 / X_AVM-DE_SetClient4 / X_AVM-DE_DeleteClient, recognised by its ClientId
  (`provisioner-<extension>`); passwords generated to the box's own rules (X_VoIP GetInfoEx). After each
  write the client is read back: a box that does not keep the ClientId as sent stops the push (exit 4),
  since the agent could no longer tell its clients from the customer's; a client with one of the agent's
  user names but without its ClientId is the customer's and is never taken over or removed.
- InComingNumbers is AVM's number list, the format X_AVM-DE_GetNumbers answers (`<List><Item><Number>…
  </Number><Type>eVoIP</Type><Index>0</Index><Name>…</Name></Item></List>`; sources: AVM "TR-064 Support –
  X_VoIP" (x_voip-avm.pdf) as used by blacksenator/fritzsoap src/x_voip.php and Kruemelino/FBoxAPI
  FBoxObj/SIP/SIPTelNrList.vb, which deserialises the GetClient3 value into that list). Each entry is
  copied from the box's own GetNumbers entry for that number: a number the box does not have is refused
  before anything is written. The read-back parses the list and compares the numbers. An empty list is sent
  for a line without a number (unverified: AVM's default for an empty list is taken to be "all numbers").
- Actions: REQUIRED (per part of the push) are checked against the box's own description before anything
  is written (a box without one: NotSupported, exit 2, nothing written); without an OPTIONAL action the
  driver does less and says so (a read-back key it cannot get is NOT_REPORTED, never drift). A push that
  stops after it wrote something (an action the description lists is refused, an error) raises
  PushIncomplete (exit 4) naming what was written.
- The box's config password: LANConfigSecurity SetConfigPassword, generated to LANConfigSecurity GetInfo's
  rules; GetInfo's X_AVM-DE_IsDefaultPasswordActive is what can be read back (an older FRITZ!OS without it:
  "not reported").
- DeviceConfig Reboot / FactoryReset.
- Error 866 (second factor): X_AVM-DE_Auth SetConfig(start) gives a token and the methods; the technician
  is told exactly what to do at the box; GetState is polled (token in the SOAP header) until
  "authenticated" or the timeout; then the action is retried with the token. fritzconnection 1.15 cannot
  send that header (its PR #253 is open), so its Soaper is subclassed to add `<avm:token>`: nothing else
  of the library is changed.

Passwords the box only takes (client passwords, the config password) cannot be read back over TR-064:
they show as "not readable" in drift reports, never as drift.
"""

from __future__ import annotations

import html
import logging
import re
import string
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from provisioner.credentials import DEFAULT_ALPHABET, PasswordRule
from provisioner.drivers.base import (NOT_REPORTED, WRITE_ONLY, ActionFailed, AuthenticationFailed,
                                      ConfirmationTimeout, Driver, DriverError, NotAuthorized, NotSupported,
                                      PinMismatch, Progress, PushIncomplete, PushResult, Unreachable, scrub)
from provisioner.errors import InputError
from provisioner.drivers.pins import TlsPins, check_tls_pin, endpoint
from provisioner.secret import Secret

log = logging.getLogger("provisioner.drivers.fritzbox")

CLIENT_ID_PREFIX = "provisioner-"
AUTH_SERVICE = "X_AVM-DE_Auth1"
VOIP = "X_VoIP1"
TOKEN_HEADER = '<s:Header><avm:token xmlns:avm="avm.de" s:mustUnderstand="1">{token}</avm:token></s:Header>'
LAN = "LANConfigSecurity1"

# What each part of a push needs from the box's TR-064 description: (service, action, what for). Checked
# before anything is written. Names as in the real SCPDs (tests/data/fritzbox: FRITZ!OS 7.57 and 8.02).
REQUIRED: dict[str, tuple[tuple[str, str, str], ...]] = {
    "rules": ((VOIP, "GetInfoEx", "the box's rules for user names and passwords"),),
    "clients": ((VOIP, "X_AVM-DE_GetNumberOfClients", "count the IP phones"),
                (VOIP, "X_AVM-DE_GetClient3", "read an IP phone back with its ClientId and numbers"),
                (VOIP, "X_AVM-DE_SetClient4", "write an IP phone with its user name and ClientId"),
                (VOIP, "X_AVM-DE_DeleteClient", "remove an IP phone the agent created")),
    "incoming": ((VOIP, "X_AVM-DE_GetNumbers", "the box's own numbers, for a handset's incoming numbers"),),
    "trunks": ((VOIP, "X_AVM-DE_GetVoIPAccount", "read a SIP trunk back"),
               (VOIP, "X_AVM-DE_AddVoIPAccount", "write a SIP trunk")),
    "remove_trunks": ((VOIP, "X_AVM-DE_DelVoIPAccount", "remove a SIP trunk the agent set"),),
    "config_password": ((LAN, "SetConfigPassword", "replace the box's config password"),),
}
# Without these the driver does less, and says so.
OPTIONAL: dict[tuple[str, str], str] = {
    (LAN, "GetInfo"): "config password rules (8..32 characters assumed) and X_AVM-DE_IsDefaultPasswordActive "
                      "(read back as 'not reported')",
    (LAN, "X_AVM-DE_GetCurrentUser"): "the login check and the user's rights (DeviceInfo GetInfo proves the login)",
    (VOIP, "GetMaxVoIPNumbers"): "how many trunk indices to read back (20 without it)",
    (VOIP, "GetExistingVoIPNumbers"): "a fact only",
    (AUTH_SERVICE, "SetConfig"): "the second-factor confirmation, used only when the box asks for it (866)",
    (AUTH_SERVICE, "GetState"): "the second-factor confirmation, used only when the box asks for it (866)",
    ("DeviceInfo1", "GetInfo"): "model, firmware, serial (facts)",
    ("DeviceConfig1", "Reboot"): "the reboot command only",
    ("DeviceConfig1", "FactoryReset"): "the reset command only",
}
NUMBER_TYPES = ("eAllCalls", "eGSM", "eISDN", "eNone", "ePOTS", "eVoIP")  # Kruemelino/FBoxAPI Basics/Enums.vb


def parse_number_list(text: str | None) -> list[dict[str, str]] | None:
    """AVM's number list (GetNumbers' NewNumberList, GetClient3's InComingNumbers) as dicts; None when it
    is not such a list. An empty value is the empty list."""
    text = (text or "").strip()
    if not text:
        return []
    if "<!DOCTYPE" in text[:2048] or "<!ENTITY" in text:
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    if root.tag != "List":
        return None
    out = []
    for item in root.findall("Item"):
        out.append({k: (item.findtext(k) or "").strip() for k in ("Number", "Type", "Index", "Name")})
    return out


def number_list(items: Sequence[dict[str, str]]) -> str:
    """The XML list for X_AVM-DE_SetClient4's InComingNumbers; "" for none."""
    if not items:
        return ""
    parts = "".join(f"<Item><Number>{html.escape(i['Number'], quote=False)}</Number>"
                    f"<Type>{html.escape(i['Type'], quote=False)}</Type><Index>{html.escape(i['Index'], quote=False)}"
                    f"</Index><Name>{html.escape(i.get('Name', ''), quote=False)}</Name></Item>" for i in items)
    return f"<List>{parts}</List>"


def _plain(number: str) -> str:
    """A number as compared: without the spaces, dashes, slashes and brackets people write in it."""
    return re.sub(r"[\s\-/().]", "", number or "")


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(v)


def wanted_numbers(text: str) -> list[str]:
    """A handset's incoming numbers as the inventory gives them (one number, or several with commas)."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def incoming_shown(text: str | None) -> str:
    """GetClient3's InComingNumbers as compared: the numbers of the list, sorted, with commas; a value that
    is not AVM's list is shown as it is (and so differs)."""
    items = parse_number_list(text)
    if items is None:
        return text or ""
    return ",".join(sorted(_plain(i["Number"]) for i in items))


class _NoDebug(logging.Filter):
    """fritzconnection's debug log prints whole SOAP envelopes, passwords included: never let it out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def _quiet_library() -> None:
    from fritzconnection.core.logger import fritzlogger
    if not any(isinstance(f, _NoDebug) for f in fritzlogger.filters):
        fritzlogger.addFilter(_NoDebug())


# ---- what the box should hold --------------------------------------------------------------------

@dataclass(frozen=True)
class Trunk:
    index: int
    registrar: str
    number: str
    username: str
    password: Secret
    outbound_proxy: str = ""
    stun_server: str = ""
    applied: bool = False  # the store knows this very password is on the box already


@dataclass(frozen=True)
class Handset:
    extension: str
    username: str
    phone_name: str
    password: Secret
    outgoing_number: str = ""
    incoming_numbers: str = ""
    applied: bool = False

    @property
    def client_id(self) -> str:
        return CLIENT_ID_PREFIX + self.extension


@dataclass(frozen=True)
class BoxDesired:
    trunks: tuple[Trunk, ...] = ()
    handsets: tuple[Handset, ...] = ()
    config_password: Secret | None = None
    config_password_applied: bool = False
    remove_trunks: tuple[int, ...] = ()  # indices of trunks the agent set that left the inventory
    force: bool = False  # write even what the store says is applied
    # a handset's incoming number the box does not have: refuse the push (an operator's push), or leave it
    # out of the client's list with a note (the registrar sync: the phones must still register)
    strict_numbers: bool = True

    def secrets(self) -> list[Secret]:
        out = [t.password for t in self.trunks] + [h.password for h in self.handsets]
        return out + ([self.config_password] if self.config_password else [])


@dataclass(frozen=True)
class CharRule:
    min: int
    max: int
    allowed: str  # "" = the box did not say

    def check(self, value: str) -> str | None:
        if not self.min <= len(value) <= self.max:
            return f"length {len(value)} not within {self.min}..{self.max}"
        if self.allowed:
            bad = sorted(set(value) - set(self.allowed))
            if bad:
                return f"characters {''.join(bad)!r} not allowed"
        return None

    def password_rule(self, preferred: int = 20, also: PasswordRule | None = None) -> PasswordRule:
        """A generator rule inside the box's limits, using only characters safe in every config format."""
        alphabet = set(self.allowed) if self.allowed else set(DEFAULT_ALPHABET)
        alphabet &= set(DEFAULT_ALPHABET)
        lo, hi = max(self.min, 8), self.max if self.max > 0 else 128
        if also is not None:
            alphabet &= set(also.alphabet)
            lo = max(lo, min(also.length, hi))
        if len(alphabet) < 10:
            alphabet = (set(self.allowed) if self.allowed else set(DEFAULT_ALPHABET)) & set(
                string.ascii_letters + string.digits)
        if len(alphabet) < 10:
            raise ActionFailed(f"the box allows too few characters for a password ({len(alphabet)} usable)")
        if hi < lo:
            raise ActionFailed(f"the box's password length limits ({self.min}..{self.max}) leave no safe length")
        length = min(max(preferred, lo), hi)
        require = [name for name, chars in (("lower", string.ascii_lowercase), ("upper", string.ascii_uppercase),
                                            ("digit", string.digits)) if alphabet & set(chars)]
        return PasswordRule(length=length, alphabet="".join(sorted(alphabet)), require=require)


@dataclass(frozen=True)
class BoxRules:
    client_password: CharRule
    client_username: CharRule
    config_password: CharRule
    trunk_password: CharRule
    trunk_username: CharRule


# ---- the fritzconnection hooks -------------------------------------------------------------------

def _token_soaper_class():
    from fritzconnection.core.soaper import Soaper

    class TokenSoaper(Soaper):
        """fritzconnection's Soaper plus the `<avm:token>` SOAP header of the X_AVM-DE_Auth flow."""

        token: str | None = None

        def get_body(self, service, action_name, arguments):
            body = super().get_body(service, action_name, arguments)
            if self.token:
                return TOKEN_HEADER.format(token=html.escape(self.token)) + body
            return body

    return TokenSoaper


def _connection_class():
    import requests
    from fritzconnection import FritzConnection

    class PinnedAdapter(requests.adapters.HTTPAdapter):
        def __init__(self, fingerprint: str, **kw):
            self._fingerprint = fingerprint
            super().__init__(**kw)

        def init_poolmanager(self, *args, **kwargs):
            kwargs["assert_fingerprint"] = self._fingerprint
            return super().init_poolmanager(*args, **kwargs)

    class PinnedFritzConnection(FritzConnection):
        """FritzConnection whose HTTPS session only talks to the certificate pinned for the box."""

        def __init__(self, *args, pin: str | None = None, **kwargs):
            self._pin = pin
            super().__init__(*args, **kwargs)

        def _load_router_api(self, *args, **kwargs):
            # The box is trusted by its pinned certificate, not by a CA: REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE in
            # the environment would otherwise turn verification back on (and *_PROXY send LAN traffic away).
            self.session.trust_env = False
            if self._pin:  # before the first request: descriptions are fetched through the pinned session
                self.session.mount("https://", PinnedAdapter(self._pin))
            return super()._load_router_api(*args, **kwargs)

    return PinnedFritzConnection


_CODE = re.compile(r"errorCode:\s*(\d+)")
_DESC = re.compile(r"errorDescription:\s*(.+)")


def describe_methods(methods: str) -> list[str]:
    """X_AVM-DE_Auth NewMethods ("button,dtmf;*1234,googleauth") as steps a technician can follow."""
    out = []
    for m in (x.strip() for x in re.split(r"[,\s]+", methods or "") if x.strip()):
        kind, _, arg = m.partition(";")
        kind = kind.lower()
        if kind == "button":
            out.append("press a button on the FRITZ!Box (any of its buttons, e.g. 'Connect/WPS' or 'DECT')")
        elif kind == "dtmf":
            out.append(f"on a telephone connected to the FRITZ!Box, dial {arg}" if arg else
                       "on a telephone connected to the FRITZ!Box, dial the code the box shows")
        elif kind in ("googleauth", "totp"):
            out.append("enter the current code of the authenticator app registered with the FRITZ!Box "
                       "in its user interface")
        else:
            out.append(f"confirm with the method {m!r} as the FRITZ!Box describes it")
    return out or ["press a button on the FRITZ!Box (any of its buttons)"]


class FritzBoxDriver(Driver):
    name = "fritzbox"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"facts", "push", "read_back", "reboot", "factory_reset", "trunk", "registrar", "config_password"})

    def __init__(self, host: str, user: str, passwords: Sequence[Secret], *, home: Path, port: int = 49000,
                 tls_port: int = 49443, tls: str = "auto", timeout: float = 10.0, confirm_timeout: float = 120.0,
                 poll_interval: float = 1.0, on_confirm: Callable[[str], None] | None = None,
                 progress: Progress | None = None, label: str | None = None, forget_hint: str = ""):
        super().__init__(progress)
        if tls not in ("auto", "required", "off"):
            raise ValueError("tls is auto, required or off")
        self.host, self.user, self.port, self.tls_port, self.tls = host, user, port, tls_port, tls
        self._passwords = [p for p in passwords if p is not None]
        self.home, self.timeout = home, timeout
        self.confirm_timeout, self.poll_interval = confirm_timeout, poll_interval
        self.on_confirm = on_confirm or (lambda text: log.warning("%s", text))
        self._label = label or f"FRITZ!Box at {host}"
        self.forget_hint = forget_hint or "provisioner routers forget-key MAC"
        self.fc = None
        self.transport: str | None = None
        self.login_index: int | None = None  # which of `passwords` the box took
        self.login_secret: Secret | None = None
        self.second_factor_used = False
        self._secrets: list[Secret] = list(self._passwords)

    @property
    def label(self) -> str:
        return self._label

    # ---- connection ----------------------------------------------------------------------------
    def open(self) -> None:
        if self.fc is not None:
            return
        if not self._passwords:
            raise AuthenticationFailed(f"{self.label}: no password for user {self.user!r} (see the router's "
                                       f"management.password_env / password_file in the inventory)")
        _quiet_library()
        import requests
        from fritzconnection.core.exceptions import FritzConnectionException

        pin, use_tls = None, False
        if self.tls != "off":
            had_pin = TlsPins(self.home).get(self.host, self.tls_port) is not None
            try:
                pin, new = check_tls_pin(self.home, self.host, self.tls_port, min(self.timeout, 5.0), self.label,
                                         self.forget_hint)
                use_tls = True
                if new:
                    self.progress(f"pinned the TLS certificate of {endpoint(self.host, self.tls_port)} "
                                  f"(first contact)")
            except Unreachable as e:
                if self.tls == "required" or had_pin:
                    why = ("a certificate was pinned for it before, so plain HTTP is refused" if had_pin
                           else "tls: required")
                    raise Unreachable(f"{self.label}: {e}; {why}") from None
        port = self.tls_port if use_tls else self.port
        self.transport = f"https {endpoint(self.host, port)} (pinned)" if use_tls else f"http {endpoint(self.host, port)}"
        self.progress(f"connecting to {self.label} over {self.transport.split(' ')[0]}")
        cls = _connection_class()
        try:
            fc = cls(address=self.host, port=port, user=self.user, password=self._passwords[0].reveal(),
                     timeout=(min(self.timeout, 5.0), self.timeout), use_tls=use_tls, use_cache=False, pin=pin)
        except requests.exceptions.SSLError as e:
            raise self._ssl_error(e) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise Unreachable(f"{self.label}: no answer on {endpoint(self.host, port)} ({type(e).__name__})") from None
        except FritzConnectionException as e:
            if "ingerprint" in str(e):
                raise self._ssl_error(e) from None
            raise Unreachable(f"{self.label}: {str(e).strip()}") from None
        soaper_cls = _token_soaper_class()
        s = fc.soaper
        fc.soaper = soaper_cls(s.address, s.port, s.user, s.password, timeout=s.timeout, session=s.session,
                               redact_debug_log=True)
        self.fc = fc
        self._login()

    def _use_password(self, pw: Secret) -> None:
        from requests.auth import HTTPDigestAuth
        self.fc.session.auth = HTTPDigestAuth(self.user, pw.reveal())
        self.fc.soaper.password = pw.reveal()
        self.fc.soaper.user = self.user

    def _login(self) -> None:
        """Try each candidate password with a call that needs a login; remember which one worked."""
        for i, pw in enumerate(self._passwords):
            self._use_password(pw)
            try:
                cur = self._call("LANConfigSecurity1", "X_AVM-DE_GetCurrentUser", second_factor=False)
            except AuthenticationFailed:
                continue
            except NotSupported:  # very old FRITZ!OS: any authenticated read proves the login
                try:
                    self._call("DeviceInfo1", "GetInfo", second_factor=False)
                except AuthenticationFailed:
                    continue
                cur = {}
            self.login_index, self.login_secret = i, pw
            self.current_user_rights = cur.get("NewX_AVM-DE_CurrentUserRights")
            return
        tried = "the stored password" if len(self._passwords) == 1 else f"{len(self._passwords)} known passwords"
        raise AuthenticationFailed(
            f"{self.label}: the box refused the login of user {self.user!r} ({tried}, HTTP digest). Check that "
            f"the user exists on the box with 'Allow access for applications' on (Home Network > Network > "
            f"Network Settings) and that its password is the one in the inventory's management.password_env/"
            f"password_file; after a factory reset the user must be created again.")

    def close(self) -> None:
        if self.fc is not None:
            try:
                if getattr(self.fc.soaper, "token", None):
                    self.fc.soaper.token = None
                self.fc.session.close()
            except Exception:
                pass
        self.fc = None

    def _ssl_error(self, e: Exception) -> DriverError:
        text = str(e)
        if "ingerprint" in text:
            return PinMismatch(f"{self.label}: the TLS certificate changed while connecting (it no longer matches "
                               f"the one pinned on first contact); refused. Check on site, then "
                               f"`{self.forget_hint}`.")
        return Unreachable(f"{self.label}: TLS failed ({type(e).__name__})")

    # ---- calls ---------------------------------------------------------------------------------
    def _call(self, service: str, action: str, second_factor: bool = True, **arguments) -> dict:
        """One TR-064 action; error 866 runs the confirmation flow and retries (at most twice)."""
        if self.fc is None:
            self.open()
        for attempt in range(3):
            try:
                return self._raw(service, action, arguments)
            except _Fault as f:
                if f.code == "866" and second_factor and attempt < 2:
                    self._second_factor(action)
                    continue
                raise self._translate(f, service, action) from None
        raise ActionFailed(f"{self.label}: {action} still asks for a confirmation after it was given")

    def _raw(self, service: str, action: str, arguments: dict) -> dict:
        import requests
        from fritzconnection.core.exceptions import (FritzActionError, FritzAuthorizationError,
                                                     FritzConnectionException, FritzSecurityError,
                                                     FritzServiceError)
        svc = self.fc.services.get(self.fc.normalize_name(service))
        if svc is None:
            raise NotSupported(f"{self.label}: this FRITZ!OS has no TR-064 service {service.rstrip('1')}")
        if action not in svc.actions:  # only actions the box's own description lists are ever sent
            raise NotSupported(f"{self.label}: this FRITZ!OS has no action {service.rstrip('1')}:{action}")
        try:
            return self.fc.call_action(service, action, arguments=dict(arguments))
        except FritzAuthorizationError:
            raise AuthenticationFailed(f"{self.label}: login of user {self.user!r} refused") from None
        except FritzServiceError:
            raise NotSupported(f"{self.label}: this FRITZ!OS has no TR-064 service {service}") from None
        except FritzSecurityError as e:
            raise _Fault("606", self._desc(e)) from None
        except FritzActionError as e:
            code = self._code(e)
            if code is None:  # fritzconnection's own "unknown action"
                raise NotSupported(f"{self.label}: this FRITZ!OS has no action {service}:{action}") from None
            raise _Fault(code, self._desc(e)) from None
        except FritzConnectionException as e:
            raise _Fault(self._code(e) or "?", self._desc(e)) from None
        except requests.exceptions.SSLError as e:
            raise self._ssl_error(e) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise Unreachable(f"{self.label}: no answer to {action} ({type(e).__name__})") from None

    @staticmethod
    def _code(e: Exception) -> str | None:
        m = _CODE.search(str(e))
        return m.group(1) if m else None

    def _desc(self, e: Exception) -> str:
        m = _DESC.search(str(e))
        text = m.group(1).strip() if m else str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return scrub(text, self._secrets)[:200]

    def _translate(self, f: "_Fault", service: str, action: str) -> DriverError:
        if f.code == "606":
            return NotAuthorized(
                f"{self.label}: user {self.user!r} may not call {service.rstrip('1')}:{action} (606 {f.desc}); "
                f"give it the rights 'FRITZ!Box settings' and 'Voice messages, fax messages, FRITZ!App Fon and "
                f"call list' on the box")
        if f.code == "866":
            return ConfirmationTimeout(f"{self.label}: {action} needs a confirmation at the box (866)")
        if f.code == "867":
            return ActionFailed(f"{self.label}: {action}: the box blocks confirmations for now (867 {f.desc}); "
                                f"wait (AVM: up to an hour) and try again")
        if f.code == "868":
            return ActionFailed(f"{self.label}: {action}: another confirmation is running at the box (868); "
                                f"finish or cancel it there and try again")
        if f.code == "401":
            return NotSupported(f"{self.label}: the box refused {service.rstrip('1')}:{action} as an invalid action "
                                f"(401 {f.desc}) although its description lists it")
        if f.code in ("713", "714"):
            return ActionFailed(f"{self.label}: {action}: no such entry ({f.code} {f.desc})")
        return ActionFailed(f"{self.label}: {action} failed: error {f.code} {f.desc}")

    def _second_factor(self, action: str) -> None:
        """X_AVM-DE_Auth: start, tell the technician what to do, poll GetState, keep the token."""
        soaper = self.fc.soaper
        soaper.token = None
        try:
            r = self._raw(AUTH_SERVICE, "SetConfig", {"NewAction": "start"})
        except _Fault as f:
            if f.code != "868":
                raise self._translate(f, AUTH_SERVICE, "SetConfig") from None
            self._stop_auth()  # a confirmation left over from an earlier run: cancel it, start ours
            try:
                r = self._raw(AUTH_SERVICE, "SetConfig", {"NewAction": "start"})
            except _Fault as f2:
                raise self._translate(f2, AUTH_SERVICE, "SetConfig") from None
        token, state, methods = r.get("NewToken") or "", r.get("NewState") or "", r.get("NewMethods") or ""
        if not token:
            raise ActionFailed(f"{self.label}: the box asked for a confirmation but gave no token (state {state!r})")
        steps = describe_methods(methods)
        text = (f"{self.label} asks for a confirmation on site before it allows {action} (error 866, "
                f"second factor). Within {self.confirm_timeout:g} s, " + "; or ".join(steps) + ".")
        self.on_confirm(text)
        soaper.token = token
        deadline = time.monotonic() + self.confirm_timeout
        polls = 0
        while True:
            try:
                state = (self._raw(AUTH_SERVICE, "GetState", {}).get("NewState") or "").lower()
            except _Fault as f:
                soaper.token = None
                raise self._translate(f, AUTH_SERVICE, "GetState") from None
            polls += 1
            if state == "authenticated":
                self.second_factor_used = True
                self.progress("confirmed at the box")
                return
            if state in ("stopped", "blocked", "failure", "failed"):
                soaper.token = None
                raise ActionFailed(f"{self.label}: the confirmation for {action} ended with state {state!r} "
                                   f"at the box; run the command again")
            if time.monotonic() >= deadline or polls > 100_000:
                self._stop_auth()
                soaper.token = None
                raise ConfirmationTimeout(
                    f"{self.label}: nobody confirmed {action} at the box within {self.confirm_timeout:g} s "
                    f"(expected: " + "; or ".join(steps) + "). Nothing was changed by this step; run the command "
                    f"again with someone at the box (--confirm-timeout S gives them longer).")
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    def _stop_auth(self) -> None:
        try:
            self._raw(AUTH_SERVICE, "SetConfig", {"NewAction": "stop"})
        except (DriverError, _Fault):
            pass

    # ---- what this FRITZ!OS offers --------------------------------------------------------------
    def has(self, service: str, action: str) -> bool:
        """Whether the box's own description lists the action (nothing else is ever sent)."""
        if self.fc is None:
            self.open()
        svc = self.fc.services.get(self.fc.normalize_name(service))
        return svc is not None and action in svc.actions

    def needs(self, desired: BoxDesired) -> list[tuple[str, str, str]]:
        """The REQUIRED actions a push of `desired` uses."""
        parts = ["rules", "clients"]
        if desired.trunks:
            parts.append("trunks")
        if desired.remove_trunks:
            parts.append("remove_trunks")
        if desired.config_password is not None:
            parts.append("config_password")
        if any(wanted_numbers(h.incoming_numbers) for h in desired.handsets):
            parts.append("incoming")
        return [need for part in parts for need in REQUIRED[part]]

    def preflight(self, desired: BoxDesired) -> None:
        """Refuse, before anything is written, a push this FRITZ!OS cannot complete."""
        missing = [f"{svc.rstrip('1')}:{action} ({why})" for svc, action, why in self.needs(desired)
                   if not self.has(svc, action)]
        if missing:
            version = getattr(self.fc, "system_version", None) or "this FRITZ!OS"
            raise NotSupported(f"{self.label}: FRITZ!OS {version} lacks what the push needs: " + "; ".join(missing)
                               + ". Nothing was written; update the box's FRITZ!OS, or set this up in its user "
                               "interface.")

    def optional_missing(self) -> list[str]:
        """OPTIONAL actions this box lacks, with what the driver does without them."""
        return [f"{svc.rstrip('1')}:{action}: {what}" for (svc, action), what in OPTIONAL.items()
                if not self.has(svc, action)]

    # ---- rules ---------------------------------------------------------------------------------
    def rules(self) -> BoxRules:
        ex = self._call(VOIP, "GetInfoEx", second_factor=False)
        try:
            lan = self._call(LAN, "GetInfo", second_factor=False)
        except DriverError:
            lan = {}

        def rule(prefix: str, src: dict, lo="MinChars", hi="MaxChars", allowed="AllowedChars") -> CharRule:
            return CharRule(int(src.get(f"{prefix}{lo}") or 0), int(src.get(f"{prefix}{hi}") or 0) or 128,
                            src.get(f"{prefix}{allowed}") or "")

        config = CharRule(int(lan.get("NewMinCharsPassword") or 0), int(lan.get("NewMaxCharsPassword") or 0) or 32,
                          lan.get("NewAllowedCharsPassword") or "")
        return BoxRules(client_password=rule("NewX_AVM-DE_ClientPassword", ex),
                        client_username=rule("NewX_AVM-DE_ClientUsername", ex),
                        config_password=config,
                        trunk_password=rule("NewVoIPPassword", ex),
                        trunk_username=rule("NewVoIPUsername", ex))

    # ---- getters -------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        self.open()
        out: dict[str, Any] = {"platform": "FRITZ!Box (TR-064)", "transport": self.transport,
                               "login_user": self.user, "user_rights": getattr(self, "current_user_rights", None)}
        missing: list[str] = []

        def get(service: str, action: str) -> dict:
            try:
                return self._call(service, action, second_factor=False)
            except DriverError as e:
                missing.append(f"{service.rstrip('1')}:{action} ({type(e).__name__})")
                return {}

        info = get("DeviceInfo1", "GetInfo")
        out.update(model=info.get("NewModelName") or self.fc.modelname, firmware=info.get("NewSoftwareVersion")
                   or self.fc.system_version, serial=info.get("NewSerialNumber"),
                   hardware=info.get("NewHardwareVersion"), manufacturer=info.get("NewManufacturerName"),
                   uptime_s=info.get("NewUpTime"))
        mac = get("LANEthernetInterfaceConfig1", "GetInfo").get("NewMACAddress")
        out["lan_mac"] = mac.lower().replace("-", ":") if mac else None
        mgmt = get("ManagementServer1", "GetInfo")
        out["tr069"] = {"acs_url": mgmt.get("NewURL") or None, "periodic_inform": mgmt.get("NewPeriodicInformEnable"),
                        "upgrades_managed": mgmt.get("NewUpgradesManaged")} if mgmt else None
        remote = get("X_AVM-DE_RemoteAccess1", "GetInfo")
        out["remote_access"] = {"enabled": remote.get("NewEnabled"), "port": remote.get("NewPort")} if remote else None
        myfritz = get("X_AVM-DE_MyFritz1", "GetInfo")
        out["myfritz"] = {"enabled": myfritz.get("NewEnabled")} if myfritz else None
        upnp = get("X_AVM-DE_UPnP1", "GetInfo")
        out["upnp"] = {"enabled": upnp.get("NewEnable")} if upnp else None
        out["second_factor"] = get(AUTH_SERVICE, "GetInfo").get("NewEnabled")
        out["default_config_password_active"] = get("LANConfigSecurity1", "GetInfo").get(
            "NewX_AVM-DE_IsDefaultPasswordActive")
        out["voip_accounts"] = get(VOIP, "GetExistingVoIPNumbers").get("NewExistingVoIPNumbers")
        out["ip_phone_clients"] = get(VOIP, "X_AVM-DE_GetNumberOfClients").get("NewX_AVM-DE_NumberOfClients")
        out["unavailable"] = missing
        out["actions_missing"] = self.optional_missing() + [
            f"{svc.rstrip('1')}:{action} (required to {why})" for part in REQUIRED.values()
            for svc, action, why in part if not self.has(svc, action)]
        return out

    def _trunk_indices(self) -> range:
        try:
            n = int(self._call(VOIP, "GetMaxVoIPNumbers", second_factor=False).get("NewMaxVoIPNumbers") or 0)
        except DriverError:
            n = 0
        return range(min(max(n, 0), 64) or 20)

    def _get_trunk(self, index: int) -> dict | None:
        try:
            r = self._call(VOIP, "X_AVM-DE_GetVoIPAccount", second_factor=False, NewVoIPAccountIndex=index)
        except ActionFailed:
            return None  # 713/402/820: no account at this index
        if not (r.get("NewVoIPRegistrar") or r.get("NewVoIPNumber") or r.get("NewVoIPUsername")):
            return None
        return r

    def _clients(self) -> list[dict]:
        n = int(self._call(VOIP, "X_AVM-DE_GetNumberOfClients", second_factor=False)
                .get("NewX_AVM-DE_NumberOfClients") or 0)
        out = []
        for i in range(min(n, 256)):
            c = self._call(VOIP, "X_AVM-DE_GetClient3", second_factor=False, **{"NewX_AVM-DE_ClientIndex": i})
            c["index"] = i
            out.append(c)
        return out

    @staticmethod
    def _client_key(c: dict) -> str:
        cid = c.get("NewX_AVM-DE_ClientId") or ""
        return f"client[{cid}]" if cid.startswith(CLIENT_ID_PREFIX) else f"client#{c['index']}"

    def read_back(self) -> dict[str, Any]:
        self.open()
        out: dict[str, Any] = {}
        for i in self._trunk_indices():
            t = self._get_trunk(i)
            if t is None:
                continue
            p = f"trunk[{i}]"
            pw = t.get("NewVoIPPassword")
            out.update({f"{p}.registrar": t.get("NewVoIPRegistrar") or "", f"{p}.number": t.get("NewVoIPNumber") or "",
                        f"{p}.username": t.get("NewVoIPUsername") or "",
                        f"{p}.outbound_proxy": t.get("NewVoIPOutboundProxy") or "",
                        f"{p}.stun_server": t.get("NewVoIPSTUNServer") or "",
                        f"{p}.password": Secret(pw) if pw and set(pw) != {"*"} else WRITE_ONLY})
        for c in self._clients():
            k = self._client_key(c)
            out.update({f"{k}.username": c.get("NewX_AVM-DE_ClientUsername") or "",
                        f"{k}.phone_name": c.get("NewX_AVM-DE_PhoneName") or "",
                        f"{k}.outgoing_number": c.get("NewX_AVM-DE_OutGoingNumber") or "",
                        f"{k}.incoming_numbers": incoming_shown(c.get("NewX_AVM-DE_InComingNumbers")),
                        f"{k}.external_registration": bool(c.get("NewX_AVM-DE_ExternalRegistration")),
                        f"{k}.password": WRITE_ONLY})
        out["config_password"] = WRITE_ONLY
        try:  # optional: an older FRITZ!OS has no GetInfo here, or no X_AVM-DE_IsDefaultPasswordActive in it
            lan = self._call(LAN, "GetInfo", second_factor=False)
        except NotSupported:
            lan = {}
        flag = lan.get("NewX_AVM-DE_IsDefaultPasswordActive")
        out["config_password.default_active"] = NOT_REPORTED if flag is None else _bool(flag)
        return out

    def expected(self, desired: BoxDesired) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in desired.trunks:
            p = f"trunk[{t.index}]"
            out.update({f"{p}.registrar": t.registrar, f"{p}.number": t.number, f"{p}.username": t.username,
                        f"{p}.outbound_proxy": t.outbound_proxy, f"{p}.stun_server": t.stun_server,
                        f"{p}.password": t.password})
        for h in desired.handsets:
            k = f"client[{h.client_id}]"
            out.update({f"{k}.username": h.username, f"{k}.phone_name": h.phone_name,
                        f"{k}.outgoing_number": h.outgoing_number,
                        f"{k}.incoming_numbers": ",".join(sorted(_plain(n) for n in wanted_numbers(h.incoming_numbers))),
                        f"{k}.external_registration": False, f"{k}.password": h.password})
        if desired.config_password is not None:
            out["config_password"] = desired.config_password
            out["config_password.default_active"] = False
        return out

    def owned(self, key: str) -> bool:
        return key.startswith(f"client[{CLIENT_ID_PREFIX}")

    def drift_details(self) -> dict[str, str]:
        return {"config_password": "TR-064 can set the config password but not read it back"}

    # ---- push ----------------------------------------------------------------------------------
    def push(self, desired: BoxDesired) -> PushResult:
        self.open()
        self._secrets.extend(desired.secrets())
        # everything that can refuse the push is checked before the first write
        self.preflight(desired)
        self._check_user_names(desired, self._clients())
        numbers = self._check_numbers(desired)
        res = PushResult()
        try:
            for index in desired.remove_trunks:
                if self._get_trunk(index) is not None:
                    self.progress(f"removing SIP trunk {index} (no longer in the inventory)")
                    self._call(VOIP, "X_AVM-DE_DelVoIPAccount", NewVoIPAccountIndex=index)
                    res.removed.append(f"trunk[{index}]")
            for t in desired.trunks:
                self._push_trunk(t, desired.force, res)
            if numbers is not None and any(t.number for t in desired.trunks):
                numbers = self._box_numbers()  # the trunks just written add their numbers
            self._push_clients(desired, res, numbers or [])
            if desired.config_password is not None:
                if desired.config_password_applied and not desired.force:
                    res.unchanged.append("config_password")
                else:
                    self.progress("replacing the box's config password")
                    self._call(LAN, "SetConfigPassword", NewPassword=desired.config_password.reveal())
                    res.changed.append("config_password")
        except PushIncomplete:
            raise
        except NotSupported as e:  # the description listed it, the box refused it: stopped midway
            raise PushIncomplete(f"{e}. {self._written(res)}", res) from None
        except DriverError as e:
            if res.changed or res.removed:
                e.args = (f"{e} {self._written(res)}",)
                e.result = res  # type: ignore[attr-defined]
            raise
        return res

    @staticmethod
    def _written(res: PushResult) -> str:
        done = res.changed + [f"removed {k}" for k in res.removed]
        return ("Written before it stopped: " + ", ".join(done) + "." if done else "Nothing was written.")

    def _box_numbers(self) -> list[dict[str, str]]:
        items = parse_number_list(self._call(VOIP, "X_AVM-DE_GetNumbers", second_factor=False).get("NewNumberList"))
        if items is None:
            raise ActionFailed(f"{self.label}: X_AVM-DE_GetNumbers did not answer AVM's number list")
        return items

    def _check_numbers(self, desired: BoxDesired) -> list[dict[str, str]] | None:
        """Every incoming number a handset wants is one of the box's own (X_AVM-DE_GetNumbers) or a trunk's
        this push writes; None when no handset wants one."""
        wanted = {_plain(n): n for h in desired.handsets for n in wanted_numbers(h.incoming_numbers)}
        if not wanted:
            return None
        numbers = self._box_numbers()
        have = {_plain(i["Number"]) for i in numbers} | {_plain(t.number) for t in desired.trunks if t.number}
        unknown = [n for plain, n in wanted.items() if plain not in have]
        if unknown and not desired.strict_numbers:
            self.progress(f"the box has no number {', '.join(unknown)}: left out of the IP phones' incoming numbers")
            return numbers
        if unknown:
            listed = ", ".join(sorted({i["Number"] for i in numbers})) or "none"
            raise InputError(f"{self.label}: the box has no number {', '.join(unknown)} for a handset's incoming calls "
                             f"(its numbers: {listed}; the inventory's trunks add theirs). Nothing was written: add "
                             f"the number to the box or as a trunk, or correct the line's number.")
        return numbers

    def _check_user_names(self, desired: BoxDesired, clients: list[dict]) -> None:
        """A client that has one of the agent's user names but not its ClientId is someone else's: refuse
        rather than take it over (and the box refuses a second client with the same user name)."""
        wanted = {h.client_id for h in desired.handsets}
        for h in desired.handsets:
            for c in clients:
                cid = c.get("NewX_AVM-DE_ClientId") or ""
                if cid.startswith(CLIENT_ID_PREFIX) and cid not in wanted:
                    continue  # the agent's own stale client: removed before anything is added
                if (c.get("NewX_AVM-DE_ClientUsername") or "") == h.username and cid != h.client_id:
                    raise ActionFailed(
                        f"{self.label}: IP phone #{c['index']} ({c.get('NewX_AVM-DE_PhoneName') or 'no name'}) "
                        f"already uses the user name {h.username!r} with ClientId {cid or '(none)'}, not the agent's "
                        f"{h.client_id!r}. Nothing was written: remove or rename it on the box, or set the router "
                        f"option client_username_prefix.")

    def _push_trunk(self, t: Trunk, force: bool, res: PushResult) -> None:
        key = f"trunk[{t.index}]"
        have = self._get_trunk(t.index)
        if have is not None and not force:
            same = (have.get("NewVoIPRegistrar") or "", have.get("NewVoIPNumber") or "",
                    have.get("NewVoIPUsername") or "", have.get("NewVoIPOutboundProxy") or "",
                    have.get("NewVoIPSTUNServer") or "") == (t.registrar, t.number, t.username, t.outbound_proxy,
                                                             t.stun_server)
            pw = have.get("NewVoIPPassword")
            pw_same = Secret(pw) == t.password if pw and set(pw) != {"*"} else t.applied
            if same and pw_same:
                res.unchanged.append(key)
                return
        self.progress(f"SIP trunk {t.index}: {t.username}@{t.registrar}")
        self._call(VOIP, "X_AVM-DE_AddVoIPAccount", NewVoIPAccountIndex=t.index, NewVoIPRegistrar=t.registrar,
                   NewVoIPNumber=t.number, NewVoIPUsername=t.username, NewVoIPPassword=t.password.reveal(),
                   NewVoIPOutboundProxy=t.outbound_proxy, NewVoIPSTUNServer=t.stun_server)
        res.changed.append(key)

    def _push_clients(self, desired: BoxDesired, res: PushResult, numbers: list[dict[str, str]]) -> None:
        clients = self._clients()
        ours = {c.get("NewX_AVM-DE_ClientId"): c for c in clients
                if (c.get("NewX_AVM-DE_ClientId") or "").startswith(CLIENT_ID_PREFIX)}
        wanted = {h.client_id for h in desired.handsets}
        stale = sorted((c["index"] for cid, c in ours.items() if cid not in wanted), reverse=True)
        for index in stale:  # highest index first: the indices after a deleted client move down
            cid = next(cid for cid, c in ours.items() if c["index"] == index)
            self.progress(f"removing IP phone {cid} (no longer in the inventory)")
            self._call(VOIP, "X_AVM-DE_DeleteClient", **{"NewX_AVM-DE_ClientIndex": index})
            res.removed.append(f"client[{cid}]")
        if stale:
            clients = self._clients()
            ours = {c.get("NewX_AVM-DE_ClientId"): c for c in clients
                    if (c.get("NewX_AVM-DE_ClientId") or "").startswith(CLIENT_ID_PREFIX)}
        by_number = {_plain(i["Number"]): i for i in numbers}
        count = len(clients)
        for h in desired.handsets:
            key = f"client[{h.client_id}]"
            have = ours.get(h.client_id)
            incoming = [by_number[_plain(n)] for n in wanted_numbers(h.incoming_numbers) if _plain(n) in by_number]
            if len(incoming) < len(wanted_numbers(h.incoming_numbers)):
                res.notes.append(f"{h.extension}: incoming number(s) the box does not have were left out")
            want_in = ",".join(sorted(_plain(i["Number"]) for i in incoming))
            if have is not None and not desired.force and h.applied and (
                    have.get("NewX_AVM-DE_ClientUsername") or "", have.get("NewX_AVM-DE_PhoneName") or "",
                    have.get("NewX_AVM-DE_OutGoingNumber") or "", incoming_shown(have.get("NewX_AVM-DE_InComingNumbers")),
                    _bool(have.get("NewX_AVM-DE_ExternalRegistration"))) == (
                    h.username, h.phone_name, h.outgoing_number, want_in, False):
                res.unchanged.append(key)
                continue
            index = have["index"] if have is not None else count
            self.progress(f"IP phone {h.extension} ({h.phone_name}): {'updating' if have else 'adding'}")
            r = self._call(VOIP, "X_AVM-DE_SetClient4", **{
                "NewX_AVM-DE_ClientIndex": index, "NewX_AVM-DE_ClientPassword": h.password.reveal(),
                "NewX_AVM-DE_ClientUsername": h.username, "NewX_AVM-DE_PhoneName": h.phone_name,
                "NewX_AVM-DE_ClientId": h.client_id, "NewX_AVM-DE_OutGoingNumber": h.outgoing_number,
                "NewX_AVM-DE_InComingNumbers": number_list(incoming)})
            if have is None:
                count += 1
            res.changed.append(key)
            internal = r.get("NewX_AVM-DE_InternalNumber")
            if internal:
                res.notes.append(f"{h.extension}: internal number {internal}")
            # the ClientId is the agent's only proof of ownership: check the box kept it as sent
            kept = self._call(VOIP, "X_AVM-DE_GetClient3", second_factor=False,
                              **{"NewX_AVM-DE_ClientIndex": index}).get("NewX_AVM-DE_ClientId") or ""
            if kept != h.client_id:
                raise PushIncomplete(
                    f"{self.label}: the box did not keep the ClientId {h.client_id!r} of IP phone {h.extension} (it "
                    f"reports {kept or '(none)'!r}), so the agent cannot tell its IP phones from the customer's; "
                    f"stopped. {self._written(res)} Remove that IP phone on the box by hand if it is not wanted.",
                    res)

    # ---- actions -------------------------------------------------------------------------------
    def reboot(self) -> None:
        self.open()
        self.progress("rebooting the box")
        self._call("DeviceConfig1", "Reboot")

    def factory_reset(self) -> None:
        self.open()
        self.progress("resetting the box to factory settings")
        self._call("DeviceConfig1", "FactoryReset")


@dataclass
class _Fault(Exception):
    code: str
    desc: str = field(default="")

    def __str__(self) -> str:
        return f"error {self.code} {self.desc}"

"""Zero-touch: how a factory-fresh device finds this server by itself (issue 19).

Three paths bring a phone home without anyone typing a URL:

- DHCP options (`dhcp.py`): the site's DHCP server hands out the provisioning URL (option 66, 160 …);
  `provisioner dhcp export` writes that server's configuration and records the export.
- Vendor redirection services (`redirect/`): the phone asks its vendor's cloud on first boot, which
  redirects it here once its MAC is registered (`provisioner redirect register`).
- SIP PnP (`provisioner.discovery.sip_pnp`): `serve --sip-pnp` answers the phone's multicast SUBSCRIBE;
  a running responder records a heartbeat (`state.py`) so that the verdict can know it is there.

`verdict.py` puts the three together per device: which paths are in place, which its vendor and model
support, and whether it will provision by itself.
"""

"""The provisioner CLI with crashes injected where the pipeline (not this test's code) switches:
PROVISIONER_TEST_KILL_AT=serve.before_promote ends the process after the pending config was marked served
and before Store.promote_pending; serve.after_promote right after the promotion, before the reply is sent.
Every other kill point is in the code itself (provisioner.registrar.kill_point). Tests only.
"""

import os
import sys

from provisioner.store import Store

POINT = os.environ.get("PROVISIONER_TEST_KILL_AT", "")
_promote = Store.promote_pending


def promote_pending(self, *args, **kwargs):
    if POINT == "serve.before_promote":
        os._exit(137)
    switched = _promote(self, *args, **kwargs)
    if POINT == "serve.after_promote" and switched:
        os._exit(137)
    return switched


Store.promote_pending = promote_pending

if __name__ == "__main__":
    from provisioner.cli import main
    sys.argv[0] = "provisioner"
    main()

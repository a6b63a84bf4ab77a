"""Firmware (issue 18): a library of operator-approved images in --home, a per-site policy in the inventory,
staged rollouts that offer an image only to the devices they select, and verification of what came back.

- `model.py`    the `firmware:` block of a vendor profile (how the family upgrades; facts with their source)
- `versions.py` version strings: parsed from file names and User-Agents, normalised, compared
- `policy.py`   the inventory's `firmware:` and `rollout:` settings (inherit like the rest)
- `library.py`  images: add (checksum recorded), list, remove, verify
- `rollout.py`  who is offered what and when (selection, window, downgrade, pause/halt), attempts, status
- `serve.py`    the pipeline's firmware hook: /fw/ requests, the offer in a device's config, streaming
- `findings.py` what `audit` reports
"""

"""provisioner: unique credentials, authenticated delivery and drift audit for IP phones and routers."""

__version__ = "0.1.0"

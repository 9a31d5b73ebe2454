"""A key owner's own account: balance, usage, pricing and API keys (``/v1/account``, ``/v1/pricing``)."""

"""Encryption at rest for upstream keys (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from ``IMAGERELAY_SECRET_KEY`` (a Fernet key: 32 url-safe base64
bytes) or, on embedded defaults, is generated once into the data directory with
mode 0600. Operators running several replicas must set the same key everywhere.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from imagerelay.private_files import create_private_file, make_private_dir


class SecretBoxError(ValueError):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretBoxError(
                "IMAGERELAY_SECRET_KEY is not a valid Fernet key; create one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            ) from None

    @classmethod
    def from_settings(cls, configured: str | None, data_dir: Path) -> SecretBox:
        if configured:
            return cls(configured.encode())
        return cls(create_private_file(make_private_dir(data_dir) / "secret.key", Fernet.generate_key()).strip())

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise SecretBoxError("a stored channel key cannot be decrypted with the configured secret key") from None

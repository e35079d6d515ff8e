"""Uplink settings and the gateway's verifier key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ConfigError, KeyFileError, MalformedRecord
from protocol.note import NoteVerifier


@dataclass(frozen=True)
class UplinkSettings:
    """Batching, time-outs and back-off of the uplink (all times in ms)."""

    batch_max_records: int = 256
    batch_max_bytes: int = 64 * 1024
    batch_interval_ms: int = 1_000
    batch_jitter: float = 0.2  # the interval varies by ± this fraction
    receipt_timeout_ms: int = 30_000
    max_inflight_batches: int = 8
    backoff_min_ms: int = 1_000
    backoff_max_ms: int = 60_000
    poll_ms: int = 100
    # Sent records without a verified receipt for this long: say so (log, status, systemd).
    # None: twice the receipt time-out plus one batch interval (default 61 s).
    receipt_overdue_ms: int | None = None

    @property
    def overdue_after_ms(self) -> int:
        """When waiting for a receipt counts as a failure worth reporting (ms)."""
        if self.receipt_overdue_ms is not None:
            return self.receipt_overdue_ms
        return 2 * self.receipt_timeout_ms + self.batch_interval_ms


@dataclass(frozen=True)
class GatewayKey:
    """The gateway's receipt-signing key, from its C2SP verifier-key text."""

    name: str
    key_id: bytes  # the 4-byte key id = the kid of its receipts
    public_key: bytes
    text: str

    @classmethod
    def from_text(cls, text: str, key: str = "gateway.key") -> GatewayKey:
        """Parse ``<name>+<8 hex id>+<base64(0x01 || public key)>``.

        Raises ConfigError naming ``key`` if the text is not a valid verifier key.
        """
        text = text.strip()
        try:
            verifier = NoteVerifier.from_text(text)
        except MalformedRecord as exc:
            raise ConfigError(f"{key}: not a gateway verifier key "
                              f"(<name>+<hex id>+<base64>): {exc.reason}") from None
        return cls(verifier.name, verifier.key_id, verifier.public_key, text)

    @classmethod
    def from_text_or_file(cls, value: str, key: str = "gateway.key") -> GatewayKey:
        """Accept the key text itself or the path of a file that holds it.

        Raises ConfigError naming ``key``.
        """
        path = Path(value)
        if "+" not in value or _is_file(path):
            try:
                value = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyFileError(f"{key}: {value!r} is neither a verifier key nor a "
                                   f"readable file ({exc})") from None
        return cls.from_text(value, key)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a key text longer than a file name may be
        return False

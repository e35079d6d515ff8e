"""The largest MQTT packets edgeproof's own messages need (PROTOCOL.md §6 and §11).

The broker (``max_packet_size``), the gateway and the agent (the Maximum Packet Size of
their MQTT v5 CONNECT, MQTT 5 §3.1.2.11.4) refuse anything larger. The limits are derived
from the payload caps, so no honest message is ever refused and nothing much larger is
ever read, held or queued.

A PUBLISH packet (MQTT 5 §3.3) is: a fixed header (one type byte and a Remaining Length
of at most four bytes, §2.1.4), the topic name (two length bytes and the name), a packet
identifier (two bytes, QoS 1), the properties (a length and the properties themselves)
and the payload.
"""

from __future__ import annotations

from protocol.batch import MAX_BATCH_BYTES, receipts_topic, records_topic
from protocol.receipt import MAX_SIGNED_RECEIPT_BYTES

_FIXED_HEADER_BYTES = 1 + 4
_TOPIC_LENGTH_BYTES = 2
_PACKET_ID_BYTES = 2
# Our clients send no PUBLISH properties; this leaves room for the few a broker or another
# MQTT 5 client may add (message expiry, payload format, content type), never for a payload.
PROPERTIES_ALLOWANCE_BYTES = 1024
_LONGEST_TOPIC_BYTES = max(len(records_topic(bytes(16)).encode()),
                           len(receipts_topic(bytes(16)).encode()))


def publish_packet_limit(max_payload_bytes: int) -> int:
    """Return the size of the largest QoS 1 PUBLISH on an edgeproof topic carrying at most
    ``max_payload_bytes`` of payload."""
    return (_FIXED_HEADER_BYTES + _TOPIC_LENGTH_BYTES + _LONGEST_TOPIC_BYTES
            + _PACKET_ID_BYTES + PROPERTIES_ALLOWANCE_BYTES + max_payload_bytes)


# What the gateway receives: one batch per message.
MAX_RECORDS_PACKET_BYTES = publish_packet_limit(MAX_BATCH_BYTES)
# What a device receives: one signed receipt per message.
MAX_RECEIPT_PACKET_BYTES = publish_packet_limit(MAX_SIGNED_RECEIPT_BYTES)
# The broker's limit for any packet from any client (a CONNECT or SUBSCRIBE is far smaller).
MAX_PACKET_BYTES = max(MAX_RECORDS_PACKET_BYTES, MAX_RECEIPT_PACKET_BYTES)

"""The primitives under every record, against their standards' own published test vectors.

edgeproof signs with Ed25519 and seals with X25519 and XChaCha20-Poly1305, all from
libsodium, but on the hot paths through PyNaCl's cffi handle rather than its public
bindings (protocol/sodium.py): a slip there (a wrong length, a slice of the wrong end)
would still round-trip with itself. These tests hold our own entry points to RFC 8032
§7.1 (Ed25519, tests 1 to 3), RFC 7748 §6.1 (X25519) and draft-irtf-cfrg-xchacha-03
§A.3.1 (AEAD_XChaCha20_Poly1305), byte for byte.
"""

from __future__ import annotations

import pytest

from protocol.errors import VerificationError
from protocol.keys import Secret, SigningKey, verify_ed25519
from protocol.sealing import _aead_decrypt, _seal_fast, _shared_secret

# RFC 8032 §7.1: (SECRET KEY, PUBLIC KEY, MESSAGE, SIGNATURE)
RFC8032_ED25519 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
     "39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f"
     "3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67"
     "f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]

# RFC 7748 §6.1: Alice's and Bob's private keys, their public keys, the shared secret.
X25519_ALICE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
X25519_ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
X25519_BOB = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
X25519_BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
X25519_SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"

# draft-irtf-cfrg-xchacha-03 §A.3.1
XCHACHA_PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only "
                     b"one tip for the future, sunscreen would be it.")
XCHACHA_AAD = "50515253c0c1c2c3c4c5c6c7"
XCHACHA_KEY = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
XCHACHA_NONCE = "404142434445464748494a4b4c4d4e4f5051525354555657"
XCHACHA_CIPHERTEXT = (
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f"
    "4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc36948"
    "8f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e")
XCHACHA_TAG = "c0875924c1c7987947deafd8780acf49"


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_ED25519)
def test_signing_key_gives_rfc8032_public_key_and_signature(secret: str, public: str,
                                                            message: str,
                                                            signature: str) -> None:
    key = SigningKey(Secret(bytes.fromhex(secret)))
    assert key.public_key.hex() == public
    assert key.sign(bytes.fromhex(message)).hex() == signature


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_ED25519)
def test_rfc8032_signature_verifies_and_any_flipped_bit_is_refused(secret: str, public: str,
                                                                   message: str,
                                                                   signature: str) -> None:
    key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    verify_ed25519(key, msg, sig)  # the fast path (bytes)
    verify_ed25519(key, bytearray(msg), sig)  # the public binding's path
    for at in (0, 31, 32, 63):  # R and S, each end
        forged = bytearray(sig)
        forged[at] ^= 0x01
        with pytest.raises(VerificationError):
            verify_ed25519(key, msg, bytes(forged))
    with pytest.raises(VerificationError):
        verify_ed25519(key, msg + b"\x00", sig)


def test_x25519_agreement_gives_rfc7748_shared_secret_both_ways() -> None:
    alice, bob = bytes.fromhex(X25519_ALICE), bytes.fromhex(X25519_BOB)
    assert _shared_secret(alice, bytes.fromhex(X25519_BOB_PUBLIC)).hex() == X25519_SHARED
    assert _shared_secret(bob, bytes.fromhex(X25519_ALICE_PUBLIC)).hex() == X25519_SHARED


def test_x25519_agreement_with_a_low_order_point_is_refused() -> None:
    with pytest.raises(VerificationError):
        _shared_secret(bytes.fromhex(X25519_ALICE), bytes(32))  # the identity: all zero


def test_sealing_gives_the_xchacha20_poly1305_draft_ciphertext_and_tag() -> None:
    sealed = _seal_fast(XCHACHA_PLAINTEXT, bytes.fromhex(XCHACHA_AAD),
                        bytes.fromhex(XCHACHA_NONCE), bytes.fromhex(XCHACHA_KEY))
    assert sealed.hex() == XCHACHA_CIPHERTEXT + XCHACHA_TAG
    opened = _aead_decrypt(sealed, bytes.fromhex(XCHACHA_AAD), bytes.fromhex(XCHACHA_NONCE),
                           bytes.fromhex(XCHACHA_KEY))
    assert opened == XCHACHA_PLAINTEXT

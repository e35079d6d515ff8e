"""edgeproof-owner: an owner's keys, consents, revocations and decrypted data."""

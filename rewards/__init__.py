"""Reward distribution: the Merkle tree of cumulative payouts and the distributor's ABI.

Pure code shared by the gateway (which builds and posts each epoch's tree), the verifier
(which recomputes it from the log) and the owner tool (which claims with a proof). It
imports ``protocol`` only, plus the Ethereum hashing and address libraries eth-account
brings (eth-hash, eth-utils).
"""

"""Content-addressed weight snapshots: SHA-256 blobs, a canonical JSON manifest written last, leases, retention."""

"""Identity layer: DID -> PDS endpoint and signing key (plc, web, cache)."""

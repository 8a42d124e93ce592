"""The prepare pipeline's pieces: ingest, clean, dedup, pii, decontam, pack, cards."""

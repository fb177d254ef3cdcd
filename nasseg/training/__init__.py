"""The retrain: train a derived architecture from scratch (search and retrain share nasseg.runtime)."""

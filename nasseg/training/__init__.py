"""Training building blocks shared by the search engine and the retrainer."""

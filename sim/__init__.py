"""The network simulator (`meshrender sim`). It arrives with Step 5 and will drive the same
sans-IO scheduling cores as real peers; until then the package holds nothing."""

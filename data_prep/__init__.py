"""Curation: raw face videos and portraits -> WebDataset shards (see data_prep/README.md)."""

"""The namespace: what the mount shows, independent of where the bytes are.

Owns the merge of the cold stores into one tree (`merge`), the identity of a cold file
(`identity`), model recognition (`models`) and the inventory built from both
(`inventory`). Reads cold stores only and never writes them. Imports nothing from the
other tierfs layers.
"""

"""The namespace: what the mount shows, independent of where the bytes are.

Owns the entries of the merged tree (`nodes`), the merge of the cold stores into one tree
(`merge`), the identity of a cold file (`identity`), model recognition (the `models`
package, one module per layout) and the inventory that joins the merge and the models
(`inventory`, with the adapter that lets the scanner read the merge). Reads cold stores
only and never writes them. Imports nothing from the other tierfs layers; `models` does
not import the merge.
"""

"""The daemon's life: the state directory, checks before mounting, the root nursery that
owns every long-lived task, signals and unmounting. Wires the layers together; the only
package that imports all of them.
"""

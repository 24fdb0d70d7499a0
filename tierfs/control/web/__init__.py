"""The web GUI: its access rules (token, cookie, cross-site checks), its routes (the page,
live job events, settings) and its static assets. Part of the control plane: it may
import the layers below and `tierfs.control.api`'s helpers; nothing below imports it.
"""

"""Own footage in, features out: embed tracklets, search a gallery, export the network (DESIGN.md section 6)."""

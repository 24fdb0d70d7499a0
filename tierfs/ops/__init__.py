"""Operations around the mount: fsck and repair, fault points for crash tests, logging
set-up, the install command and the demo store builder.
"""

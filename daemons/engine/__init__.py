"""Pure compute: everything that turns text into codes and codes into audio, with no sockets, no
systemd and no configuration file (callers pass plain values). The daemons in `daemons/` wrap these."""

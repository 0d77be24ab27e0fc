"""Sample /proc/net tables: the procfs parser's tests and the snapshot's read them."""

TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000  1000        0 4242 1 0000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000010:00000000 00:00000000 00000000     0        0 4243 1 0000 20 4 30 10 -1
"""
TCP6_TABLE = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C351 06 00000000:00000000 03:00000F2B 00000000     0        0 0 3 0000
"""
UNIX_TABLE = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 4244 /run/app space.sock
0000000000000000: 00000002 00000000 00000000 0002 01 4245 @abstract
0000000000000000: 00000003 00000000 00000000 0005 03 4246
"""

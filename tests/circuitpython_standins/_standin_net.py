"""The test network the stand-in radio sees, from EDGEKIT_STANDIN_NET (JSON, test-only).

  ssid, password   the access point's credentials
  fail_joins       how many join attempts fail first ("No network with that ssid"), as
                   when the access point is still booting
  rssi             signal strength the radio reports
  ntp_port         the test's NTP server on 127.0.0.1: the network routes UDP port 123 there
                   (a test cannot bind the real port 123 without clashing with others)
"""
import json
import os

NET = json.loads(os.environ.get("EDGEKIT_STANDIN_NET") or "{}")

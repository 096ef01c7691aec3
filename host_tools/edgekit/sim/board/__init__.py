"""MicroPython-side files of the simulated board (not imported by CPython).

The sim puts this folder on MICROPYPATH: `_simboot.py` starts the board, `machine.py`
and `network.py` stand in for the modules only a real board has.
"""

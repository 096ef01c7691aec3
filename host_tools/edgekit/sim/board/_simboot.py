# Boots the simulated board inside the real unix `micropython` (run with -i, so
# the REPL follows). It maps the flash folder to "/" like a board's filesystem (and
# /data to LittleFS on a simulated NOR chip, _simflash.py),
# runs boot.py, then main.py unless the board was soft-reset from the raw REPL,
# and hands over to the REPL. Escapes on the console tell the supervisor where
# the boot stands; it strips them before anyone sees the output.


def _simboot():
    import sys
    import os
    import time
    import vfs
    import machine  # noqa: F401  the stand-ins must load before "/" stops being the host's
    import network  # noqa: F401
    if os.getenv("EDGEKIT_SIM_PARTITIONS"):
        import esp32  # noqa: F401  the table `edgekit flash` writes (board/esp32.py)
    from _simflash import Flash

    sys.stdout.write("\x1b]edgekit-sim:boot\x07")
    data = _data(os.getenv("EDGEKIT_SIM_DATA"))
    vfs.umount("/")
    vfs.mount(Flash(os.getenv("EDGEKIT_SIM_FLASH"), data), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    names = ["boot.py"]
    if os.getenv("EDGEKIT_SIM_MODE") != "raw":
        names.append("main.py")
    for name in names:
        try:
            f = open(name)
        except OSError:
            continue
        source = f.read()
        f.close()
        try:
            # Like a board, boot.py and main.py share the REPL's globals.
            exec(compile(source, name, "exec"), globals())
        except KeyboardInterrupt as e:
            sys.print_exception(e)
            break
        except SystemExit:
            # A board soft-resets when its script exits through sys.exit().
            sys.stdout.write("\x1b]edgekit-sim:soft\x07")
            while True:
                time.sleep(1)
        except Exception as e:
            sys.print_exception(e)
    sys.stdout.write("\x1b]edgekit-sim:ready\x07")


def _data(image):
    # /data: LittleFS on a NOR chip kept in the host file `image` (supervisor.py names it),
    # formatted on first boot, or when it does not mount, as inisetup.py does on a board.
    import vfs
    from _simnor import Nor

    if not image:
        return None
    i = image.rfind("/")
    nor = Nor(image[:i] or "/", image[i + 1:], blocks=DATA_BLOCKS)
    try:
        return vfs.VfsLfs2(nor)
    except OSError:
        vfs.VfsLfs2.mkfs(nor)
        return vfs.VfsLfs2(nor)


# 2 MiB of 4096-byte blocks, the size of the filesystem on a 4 MB ESP32.
DATA_BLOCKS = 512

_simboot()
del _simboot, _data, DATA_BLOCKS
try:
    del __file__
except NameError:
    pass

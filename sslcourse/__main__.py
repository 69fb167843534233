"`python -m sslcourse ...` is the `sslcourse` command (written by hand: nbdev exports only the other modules)."
from sslcourse.cli import console

if __name__ == '__main__': console()

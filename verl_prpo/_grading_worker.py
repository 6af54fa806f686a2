"""Entry point of the grading pool's zygote process (``verl_prpo.math_grading.GradingPool``); not for other use.

``python -m verl_prpo._grading_worker FD``: FD is this process's end of a socket pair to the pool. The zygote warms
math-verify up, then forks the grading workers the pool asks for (``verl_prpo.math_grading._zygote_main``).
"""

import sys
from multiprocessing.connection import Connection

from verl_prpo.math_grading import _zygote_main

if __name__ == "__main__":
    _zygote_main(Connection(int(sys.argv[1])))

"""Shared start-up for the ``train`` and ``test`` entries: project root, import path and distributed backend."""
import os
import sys
from os import path as osp
from typing import List, Optional

PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
REPO_ROOT = osp.dirname(PACKAGE_DIR)
STOPPED_STATUS = 130  # the shell's status for a command ended by SIGINT


def project_root() -> str:
    """Where ``experiments/``, ``results/`` and ``tb_logger/`` go (BasicSR's ``root_path``).

    ``$DESPIKE_ROOT`` when set; else the source checkout (the folder holding ``setup.py`` and ``options/``) for an
    editable install; else the working directory (a regular install lives in site-packages, which is no place for
    experiment outputs).
    """
    if os.environ.get('DESPIKE_ROOT'):
        return osp.abspath(os.environ['DESPIKE_ROOT'])
    if osp.isfile(osp.join(REPO_ROOT, 'setup.py')) and osp.isdir(osp.join(REPO_ROOT, 'options')):
        return REPO_ROOT
    return os.getcwd()


def option_file_from_argv(argv: List[str]) -> Optional[str]:
    """The value of ``-opt`` in ``argv`` (BasicSR's flag), or None."""
    for i, arg in enumerate(argv):
        if arg == '-opt' and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith('-opt='):
            return arg.split('=', 1)[1]
    return None


def prepare(argv: Optional[List[str]]) -> str:
    """Common start: register the plugin with BasicSR, set ``sys.argv`` for BasicSR's parser, validate the options
    file, pick the backend.

    Returns:
        The project root to hand to BasicSR's pipeline.
    """
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    import despike_basicsr
    from despike_basicsr import compat
    despike_basicsr.register()  # compat patches, then every registered class
    from despike_basicsr.training.options import check_options_file
    opt_path = option_file_from_argv(sys.argv[1:])
    if opt_path is not None:
        opt = check_options_file(opt_path)
        dist_params = opt.get('dist_params') or {}
        if dist_params.get('backend') and not os.environ.get(compat.DIST_BACKEND_ENV):
            os.environ[compat.DIST_BACKEND_ENV] = str(dist_params['backend'])
        if dist_params.get('timeout') and not os.environ.get(compat.DIST_TIMEOUT_ENV):
            os.environ[compat.DIST_TIMEOUT_ENV] = str(dist_params['timeout'])
    return project_root()


def run_pipeline(kind: str, argv: Optional[List[str]] = None) -> None:
    """Run BasicSR's ``train_pipeline`` or ``test_pipeline`` (``kind``), turning our input errors into one line.

    User errors (:class:`~despike_basicsr.errors.DespikeUserError`: options, checkpoints, data files; and ``OSError``)
    end the process with exit code 2 and a message naming the file (:func:`despike_basicsr.errors.run_cli`); a run
    stopped by its non-finite guard (:class:`~despike_basicsr.models.spike_base.NonFiniteTrainingError`,
    ``train.max_nonfinite_steps``) with exit code 3 and the message naming the iteration; a training stopped by a
    signal (:func:`~despike_basicsr.models.spike_base.install_stop_handler`) with :data:`STOPPED_STATUS` once its last
    finished iteration is saved; anything else is a bug and keeps its traceback.
    """
    from despike_basicsr.errors import run_cli
    from despike_basicsr.models import spike_base
    prog = f'despike-{kind}'

    def work() -> int:
        root = prepare(argv)
        if kind == 'train':
            from basicsr.train import train_pipeline as pipeline
            spike_base.install_stop_handler()  # before the data loader forks its workers
        else:
            from basicsr.test import test_pipeline as pipeline
        try:
            pipeline(root)
        except spike_base.NonFiniteTrainingError as error:
            print(f'{prog}: error: {error}', file=sys.stderr)
            return 3
        except spike_base.TrainingStopped as stop:
            print(f'{prog}: {stop}', file=sys.stderr)
            return STOPPED_STATUS
        except BaseException:
            if kind == 'train' and spike_base.stop_requested():  # e.g. a data worker took the signal and died
                for line in spike_base.save_stopped_models():
                    print(f'{prog}: {line}', file=sys.stderr)
            raise
        return 0

    status = run_cli(prog, work)
    if status:
        raise SystemExit(status)

"""One user-error policy: every user-facing error derives from DespikeUserError and keeps its built-in base; the CLIs
print one line and exit 2 for those, while bugs keep their traceback."""
import pytest

from despike_basicsr.checkpoint import CheckpointError
from despike_basicsr.data.preparation import PairingError
from despike_basicsr.data.spike_lmdb import LMDBKeyError, MetaInfoError, NotAnLMDBError, SpikeLMDBError
from despike_basicsr.errors import DespikeUserError, run_cli
from despike_basicsr.inference.infer import InferError
from despike_basicsr.inference.network import ReconstructorError
from despike_basicsr.losses.lpips_net import LPIPSWeightsError
from despike_basicsr.options_file import OptionsError
from despike_basicsr.spike.cli import CommandError
from despike_basicsr.spike.images import ImageReadError
from despike_basicsr.spike.io import SpikeFileError

USER_ERRORS = [(OptionsError, ValueError), (CheckpointError, RuntimeError), (SpikeFileError, ValueError),
               (ImageReadError, ValueError), (PairingError, ValueError), (SpikeLMDBError, ValueError),
               (NotAnLMDBError, ValueError), (MetaInfoError, ValueError), (LMDBKeyError, KeyError),
               (InferError, Exception), (ReconstructorError, ValueError), (LPIPSWeightsError, FileNotFoundError),
               (CommandError, Exception)]


@pytest.mark.parametrize('error, builtin', USER_ERRORS, ids=[e.__name__ for e, _ in USER_ERRORS])
def test_user_errors_share_one_base_and_keep_their_builtin_one(error, builtin):
    assert issubclass(error, DespikeUserError) and issubclass(error, builtin)


def test_run_cli_reports_user_errors_in_one_line_with_status_2(capsys):
    def fails(error):
        def body():
            raise error
        return body

    assert run_cli('prog', fails(OptionsError('x.yml: unknown top-level key'))) == 2
    assert capsys.readouterr().err == 'prog: error: x.yml: unknown top-level key\n'
    assert run_cli('prog', fails(LMDBKeyError('key k is not in a.lmdb'))) == 2
    assert capsys.readouterr().err == 'prog: error: key k is not in a.lmdb\n'
    assert run_cli('prog', fails(FileNotFoundError('f.dat: no such file'))) == 2
    assert capsys.readouterr().err == 'prog: error: f.dat: no such file\n'
    assert run_cli('prog', fails(ValueError('window must be >= 1')), also=(ValueError, )) == 2
    assert run_cli('prog', lambda: 0) == 0


def test_run_cli_lets_bugs_keep_their_traceback():
    def bug():
        raise ValueError('a bug, not a user error')

    with pytest.raises(ValueError, match='a bug'):
        run_cli('prog', bug)
    with pytest.raises(TypeError):
        run_cli('prog', lambda: None + 1)

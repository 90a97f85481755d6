"""Every bad input of the catalogue (tests/bad_input_cases.py) gets a clear error that names it, and the bad file stays
as it was."""
import pytest

import bad_input_cases as bad_input_table  # tests/ is importable: pytest inserts the rootdir conftest's folder

CASES = bad_input_table.build_cases()


@pytest.mark.parametrize('case', CASES, ids=[f'{c.group}: {c.what}' for c in CASES])
def test_bad_input_is_answered_clearly(case, tmp_path):
    outcome = bad_input_table.run_case(case, str(tmp_path))
    assert outcome.error_type is not None, 'the bad input was accepted'
    assert outcome.clear, f'unexplained {outcome.error_type}: {outcome.message}'
    assert outcome.names_input, f'the message does not name {case.must_name("x")!r}: {outcome.message}'
    assert outcome.unchanged, 'reading the bad input modified it'


def test_table_lists_every_case():
    table = bad_input_table.markdown([bad_input_table.Outcome(c, 'E', 'msg', True, True, True) for c in CASES])
    assert len(table.splitlines()) == len(CASES) + 2

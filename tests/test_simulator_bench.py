"""The simulator benchmark (despike_basicsr.evaluation.simulator_bench, scripts/bench_simulator.py) at a toy size."""
import numpy as np

from despike_basicsr.evaluation import simulator_bench as sb


def test_the_baselines_are_integrate_and_fire():
    rate = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    spikes = sb.loop_static(rate, 64)
    # θ = 2: a pixel of rate r fires 64·r/2 times, give or take the one its random start adds
    assert np.all(np.abs(spikes.sum(0) - 64 * rate / sb.THRESHOLD) <= 1)
    frames = np.repeat(rate[None], 64, axis=0)
    np.testing.assert_array_equal(sb.loop_varying(frames, 64), spikes)  # the same start, the same rates


def test_run_reports_every_measurement_and_the_targets():
    result = sb.run(height=8, width=16, steps=32, repeats=1, dat_bytes=1024)
    assert set(result['ratios']) == set(sb.TARGETS)
    assert [r['name'] for r in result['rows']] == [
        'static noise-free (uint8)', 'static noise-free (packed)', 'static shot noise (8 st)', 'time-varying (32 st)',
        'time-varying (packed)'
    ]
    assert all(r['ours'] > 0 and r['base'] > 0 and r['ratio'] > 0 for r in result['rows'])
    assert result['dat']['ratio'] > 0 and result['dat']['window_frames'] == 64
    lines = sb.report_lines(result)
    assert lines[0] == 'scene 8x16, 32 steps, θ=2.0, best of 1'
    assert lines[-1].startswith('targets: static >= 3x ') and len(lines) == 1 + 5 + 2 + 1

"""`sslcourse compare` (lesson 50): choosing methods, the seconds budget, resuming, the summary arithmetic, and one
line with exit status 2 for every impossible request."""
import contextlib, io, json, math
import pytest
from sslcourse import cli
from sslcourse.experiments import benchmark as comparison
from sslcourse.experiments.benchmark import (FAMILIES, FAMILY_NAMES, budget_epochs, calibrate, compare, format_table, select_methods,
                               summarise, baselines, family_winners, format_winners, budget_curve, plot_budget_curve)
from sslcourse.core import UsageError
from sslcourse.train.learner import list_methods

pytestmark = pytest.mark.usefixtures('one_thread')


def test_every_registered_method_has_a_family():
    assert set(list_methods()) <= set(FAMILIES) and set(FAMILIES.values()) <= set(FAMILY_NAMES)


def test_select_methods_by_name_family_and_all():
    assert select_methods() == list_methods() == select_methods(['all'])
    assert select_methods(['redundancy_reduction']) == [m for m in list_methods() if FAMILIES[m] == 'redundancy reduction']
    chosen = select_methods(['rotnet', 'contrastive', 'simclr'])  # no repeats, in the order asked
    assert chosen[0] == 'rotnet' and chosen.count('simclr') == 1 and 'moco' in chosen and 'byol' not in chosen
    with pytest.raises(UsageError, match="unknown method or family 'simclrr'.*contrastive.*simclr") as error:
        select_methods(['simclrr'])
    assert '\n' not in str(error.value)


def test_budget_epochs_rounds_and_keeps_one():
    assert budget_epochs(60, 14.8) == 4 and budget_epochs(60, 22.8) == 3 and budget_epochs(60, 200) == 1


def test_calibrate_scales_the_timed_epoch_to_the_training_split(tmp_path, monkeypatch):
    calls = []
    def fake_bench(arguments, runner=None):
        calls.append(arguments)
        path = arguments[arguments.index('--json') + 1]
        path.write_text(json.dumps({'seconds': 2.0}))
        return 0, ''
    monkeypatch.setattr(comparison, 'run_command', fake_bench)
    common = ['--data', 'fashion_mnist_small', '--arch', 'convnet', '--bs', 64, '--device', 'cpu']
    per_epoch, why = calibrate('simclr', common, tmp_path, limit=None, calibration_limit=50)
    from sslcourse.data import get_data
    steps = lambda n: len(get_data(limit=n).train) // 64  # the last partial batch is dropped
    assert why == '' and math.isclose(per_epoch, 2.0 * steps(None) / steps(50))
    assert calibrate('simclr', common, tmp_path, limit=None, calibration_limit=50)[0] == per_epoch
    assert len(calls) == 1  # the second call reused the stored calibration


def test_a_budget_shorter_than_half_an_epoch_is_impossible(tmp_path, monkeypatch):
    monkeypatch.setattr(comparison, 'calibrate', lambda name, *a, **k: ({'simclr': 30.0, 'npid': 12.0}[name], ''))
    with pytest.raises(UsageError, match=r'--seconds 5 is less than half an epoch of simclr, npid .*--seconds 15 or more'):
        compare(['simclr', 'npid'], seconds=5, out=tmp_path / 'out', runs=tmp_path / 'runs', log=lambda line: None)
    assert not (tmp_path / 'out').exists()  # nothing was trained or written


@pytest.mark.parametrize('arguments, fragment', [
    (['compare', 'simclrr'], "unknown method or family 'simclrr'"),
    (['compare', 'simclr', '--seconds', '0'], '--seconds must be a positive'),
    (['compare', 'simclr', '--seconds', 'nan'], '--seconds must be a positive'),
    (['compare', 'simclr', '--seconds', '60', '0'], '--seconds must be a positive'),
    (['compare', 'simclr', '--epochs', '0'], '--epochs must be at least 1'),
    (['compare', 'simclr', '--seeds', '0'], '--seeds must be at least 1'),
    (['compare', 'simclr', '--label-fraction', '1.5'], '--label-fraction must be in (0, 1]'),
    (['compare', 'simclr', '--data', 'mnistt'], "unknown dataset 'mnistt'"),
    (['compare', 'simclr', '--seconds', '30', '--epochs', '2'], 'not allowed with argument'),
    (['pretrain', 'simclr', '--label-fraction', '0.1', '0'], '--label-fraction must be in (0, 1], got 0.0')])
def test_impossible_requests_exit_2_with_one_line(arguments, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = io.StringIO()
    with contextlib.redirect_stderr(error): status = cli.main(arguments)
    lines = error.getvalue().strip().splitlines()
    assert status == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / 'benchmarks').exists() and not (tmp_path / 'runs').exists()


def test_summary_means_and_spreads_over_seeds():
    def record(method, seed, knn, linear, finetune):
        return dict(method=method, seed=seed, epochs=2, seconds=10.0, img_per_s=100.0 + seed, peak_memory_mb=500.0,
                    knn_acc=knn, linear_acc=linear, finetune_by_fraction={'0.1': finetune},
                    collapse_history=[[1, 0.05, 16.0], [2, 0.0625, 32.0]], embedding_dim=64,
                    baselines={'random init': dict(knn=0.7, linear=0.8), 'raw pixels': dict(knn=0.75, linear=0.78)})
    report = dict(fractions=['0.1'], records=[record('simclr', 0, 0.70, 0.84, 0.6), record('simclr', 1, 0.74, 0.86, 0.7),
                                              record('rotnet', 0, 0.60, 0.88, 0.5)],
                  finetune_random_init={0: {'0.1': 0.55}, 1: {'0.1': 0.65}}, skipped={'colorization': 'needs colour'},
                  diverged={}, failed={})
    rows = summarise(report)
    assert [row['method'] for row in rows] == ['rotnet', 'simclr']  # best linear probe first
    simclr = rows[1]
    assert simclr['seeds'] == 2 and math.isclose(simclr['knn'][0], 0.72) and math.isclose(simclr['knn'][1], math.sqrt(0.0008))
    assert simclr['seconds_per_epoch'] == (5.0, 0.0) and rows[0]['knn'][1] is None  # one seed: no spread
    assert math.isclose(simclr['spread'][0], 0.0625 * 8) and math.isclose(simclr['rank'][0], 0.5)  # the last epoch's
    floor = baselines(report)
    assert floor['random init']['finetune 0.1'][0] == pytest.approx(0.6) and floor['raw pixels']['linear'] == pytest.approx((0.78, 0.0))
    table = format_table(report).splitlines()
    assert len(table) == 2 + 2 + 2 + 1 and table[-1].startswith('| colorization | pretext | did not run: needs colour')




def test_a_method_with_its_own_encoder_is_measured_against_its_own_random_init():
    "CPC and Selfie wrap the ConvNet, so their random init differs: their gain uses theirs, the baseline row the shared draw."
    def record(method, seed, linear, own_init):
        return dict(method=method, seed=seed, epochs=1, seconds=1.0, img_per_s=1.0, peak_memory_mb=1.0, knn_acc=0.7,
                    linear_acc=linear, collapse_history=[], embedding_dim=8,
                    baselines={'random init': dict(knn=0.7, linear=own_init), 'raw pixels': dict(knn=0.78, linear=0.8)})
    report = dict(fractions=[], records=[record('simclr', 0, 0.85, 0.82), record('rotnet', 0, 0.84, 0.82),
                                         record('cpc', 0, 0.83, 0.84), record('simclr', 1, 0.86, 0.81),
                                         record('rotnet', 1, 0.83, 0.81), record('cpc', 1, 0.82, 0.85)],
                  finetune_random_init={}, skipped={}, diverged={}, failed={})
    floor = baselines(report)['random init']['linear']
    assert floor[0] == pytest.approx(0.815) and floor[1] == pytest.approx(math.sqrt(0.00005))  # seeds 0 and 1, not cpc's
    gains = {row['method']: row['linear gain'] for row in summarise(report)}
    assert gains['cpc'][0] == pytest.approx(-0.02) and gains['simclr'][0] == pytest.approx(0.04)
    assert gains['simclr'][1] == pytest.approx(math.sqrt(0.0002))  # +3 and +5 points over the seeds' own draws


def test_family_winners_pick_each_familys_best_against_the_better_baseline():
    def record(method, seed, knn, linear):
        return dict(method=method, seed=seed, epochs=1, seconds=1.0, img_per_s=100.0, peak_memory_mb=1.0, knn_acc=knn,
                    linear_acc=linear, finetune_by_fraction={'0.1': linear - 0.1}, collapse_history=[], embedding_dim=8,
                    baselines={'random init': dict(knn=0.70, linear=0.82), 'raw pixels': dict(knn=0.78, linear=0.80)})
    report = dict(fractions=['0.1'], records=[record('rotnet', 0, 0.75, 0.85), record('jigsaw', 0, 0.79, 0.83),
                                              record('simclr', 0, 0.80, 0.84), record('simclr', 1, 0.70, 0.86)],
                  finetune_random_init={0: {'0.1': 0.70}}, skipped={}, diverged={}, failed={})
    knn, linear, finetune = family_winners(report)
    assert knn['baseline'] == ('raw pixels', 0.78) and linear['baseline'] == ('random init', 0.82)
    assert knn['pretext'] == ('jigsaw', 0.79, None) and linear['pretext'][:2] == ('rotnet', 0.85)  # best per metric
    assert knn['contrastive'][:2] == ('simclr', pytest.approx(0.75)) and knn['contrastive'][2] == pytest.approx(math.sqrt(0.005))
    assert 'clustering' not in knn and finetune['baseline'] == ('random init', 0.70)
    table = format_winners(report).splitlines()
    assert table[0] == '| measurement | better baseline | pretext | contrastive |' and len(table) == 2 + 3
    assert '| knn | raw pixels 78.0% | jigsaw 79.0% (+1.0) | simclr 75.0% (-3.0) |' == table[2]

def test_a_small_comparison_runs_resumes_and_skips(tmp_path):
    log = []
    arguments = ['compare', 'colorization', 'rotnet', '--epochs', '1', '--limit', '10', '--bs', '32',
                 '--label-fraction', '0.1', '0.5', '--device', 'cpu', '--out', str(tmp_path / 'out'),
                 '--runs', str(tmp_path / 'runs')]
    with contextlib.redirect_stdout(io.StringIO()):
        report = comparison.run_compare(cli.build_parser().parse_args(arguments), runner=cli.main)
    assert [r['method'] for r in report['records']] == ['rotnet'] and not report['failed']
    assert 'colour' in report['skipped']['colorization'] and not report['skipped']['colorization'].startswith('sslcourse')
    for record in report['records']:
        assert set(record['finetune_by_fraction']) == {'0.1', '0.5'} and record['finetune_acc'] == record['finetune_by_fraction']['0.1']
        assert record['family'] == FAMILIES[record['method']] and record['knn_acc'] > 0.2
    assert set(report['finetune_random_init'][0]) == {'0.1', '0.5'}
    written = {p.name for p in (tmp_path / 'out').iterdir()}
    assert {'compare.json', 'compare.md', 'compare.png', 'records'} <= written
    again = compare(['rotnet'], None, 1, [0], [0.1, 0.5], 'fashion_mnist_small', 'convnet', 32, 'cpu', 10,
                    tmp_path / 'out', tmp_path / 'runs', runner=cli.main, log=log.append)
    assert log[0].startswith('rotnet seed 0: kept') and again['records'][0] == report['records'][0]


def test_the_random_init_baseline_follows_the_seed():
    "Across seeds the random-init row must vary (seed 0 stays the draw every lesson's table shows)."
    from sslcourse.data import get_data
    from sslcourse.evaluate import compare_with_baselines
    from sslcourse.models import create_encoder
    data = get_data(limit=20)
    encoder = create_encoder('convnet', data.channels)
    first, again = (compare_with_baselines(encoder, data, 'cpu', seed=0)['random init'] for _ in range(2))
    other = compare_with_baselines(encoder, data, 'cpu', seed=1)['random init']
    assert first == again and first != other
    assert compare_with_baselines(encoder, data, 'cpu')['random init'] == first  # the default is seed 0


def _budget_report(seconds, knn_by_seed, linear_by_seed, method='simclr'):
    "A `compare` report of one budget: one record per seed, with the shared baselines of each seed."
    records = [dict(method=method, seed=seed, epochs=2, seconds=float(seconds), img_per_s=100.0, peak_memory_mb=500.0,
                    knn_acc=knn, linear_acc=linear, baselines={'random init': dict(knn=0.70 + seed / 100, linear=0.80),
                                                               'raw pixels': dict(knn=0.78, linear=0.81)})
               for seed, (knn, linear) in enumerate(zip(knn_by_seed, linear_by_seed))]
    return dict(date='2026-12-07', data='fashion_mnist_small', arch='convnet', bs=256, device='cpu', limit=None,
                seconds=seconds, epochs=None, seeds=list(range(len(records))), fractions=[], machine='test',
                records=records, finetune_random_init={}, skipped={}, diverged={}, failed={})


def test_budget_curve_lines_up_the_budgets():
    curve = budget_curve({120: _budget_report(120, [0.76, 0.78], [0.85, 0.87]), 60: _budget_report(60, [0.72, 0.74], [0.83, 0.85])})
    assert curve['budgets'] == [60, 120]
    simclr = curve['methods']['simclr']
    assert simclr['family'] == 'contrastive' and simclr['seconds'] == [60, 120]
    assert [round(mean, 4) for mean, _ in simclr['knn']] == [0.73, 0.77] and simclr['linear'][1][0] == pytest.approx(0.86)
    assert simclr['knn'][0][1] == pytest.approx(math.sqrt(0.0002))  # the spread over the two seeds
    random_init = curve['baselines']['random init']['knn']  # one draw per seed, pooled over the budgets
    assert random_init[0] == pytest.approx(0.705) and random_init[1] == pytest.approx(math.sqrt(0.00005))
    assert curve['baselines']['raw pixels']['linear'][0] == pytest.approx(0.81)
    figure = plot_budget_curve(curve)
    knn_axis = figure.axes[0]
    assert [round(x, 3) for x in knn_axis.get_xticks()] == [1.0, 2.0] and knn_axis.get_xscale() == 'log'
    assert [container.get_label() for container in knn_axis.containers] == ['simclr (contrastive)']  # mean ± sd per budget
    assert len(knn_axis.patches) == 1  # the random-init band; raw pixels has no spread, so only its line
    assert {line.get_label() for line in knn_axis.get_lines()} >= {'random init', 'raw pixels'}


def test_several_budgets_run_one_comparison_each_and_draw_the_curve(tmp_path, monkeypatch):
    calls = []
    def fake_compare(methods, seconds, epochs, seeds, fractions, data, arch, bs, device, limit, out, runs, runner=None, log=print):
        calls.append((seconds, out, runs))
        return _budget_report(seconds, [0.70 + seconds / 6000] * len(seeds), [0.84] * len(seeds))
    monkeypatch.setattr(comparison, 'compare', fake_compare)
    out, runs = tmp_path / 'out', tmp_path / 'runs'
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(['compare', 'simclr', '--seconds', '120', '60', '--seeds', '2', '--label-fraction',
                           '--out', str(out), '--runs', str(runs), '--device', 'cpu'])
    assert status == 0, printed.getvalue()
    assert calls == [(60, out / '60s', runs / '60s'), (120, out / '120s', runs / '120s')]  # shortest budget first
    for budget in ('60s', '120s'): assert (out / budget / 'compare.json').is_file() and (out / budget / 'compare.md').is_file()
    curve = json.loads((out / 'budget.json').read_text())
    assert curve['budgets'] == [60, 120] and curve['seeds'] == 2
    assert [round(mean, 3) for mean, _ in curve['methods']['simclr']['knn']] == [0.71, 0.72]
    assert (out / 'budget.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

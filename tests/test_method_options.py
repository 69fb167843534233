"""Every method checks its own options in its constructor: an impossible value is one line of `UsageError` that names
the method, the option and the value, raised before anything is trained (the CLI turns it into status 2).

The cases are generated from each constructor's signature (`method_option_names`, as `-o NAME=VALUE` sees it), with
bad values chosen by the type of the default. Where a generic bad value is legal for one option (a queue size of 0 turns
the queue off), `BAD` replaces it; `EXTRA` adds the edges the generic values miss (a temperature of 0, a momentum of 1).
An option of a new method that accepts an obviously bad value fails here, as does an option whose type cannot be told
from its default (None) until it gets an entry in `BAD`. Building 22 methods is cheap: nothing is trained."""
import math

import pytest
import torch

from sslcourse.cli import method_option_names
from sslcourse.core import UsageError
from sslcourse.train.learner import get_method, list_methods
from sslcourse.models import create_encoder

NUM_IMAGES = 2000  # what the learner passes as num_images to methods that need it (deepcluster, sela, npid, pirl)
NAN = float('nan')

GENERIC = {  # bad values by the type of the option's default
    bool: (1, 'yes'),
    int: (0, -1, 1.5, True),
    float: (-1.0, NAN),
    tuple: (0.5, (0.0, 1.0), (0.5, 1.5), (0.8, 0.3), (0.2, 0.5, 1.0)),
    str: ('bogus',),
}

ZERO_IS_LEGAL = (-1, 1.5, True)  # int options for which 0 means "off" or is an ordinary value
BAD = {  # (method, option): the bad values to use instead of the generic ones
    ('swav', 'queue_size'): ZERO_IS_LEGAL, ('swav', 'local_views'): ZERO_IS_LEGAL,
    ('swav', 'queue_start'): ZERO_IS_LEGAL, ('swav', 'freeze_epochs'): ZERO_IS_LEGAL,
    ('dino', 'local_views'): ZERO_IS_LEGAL, ('dino', 'freeze_epochs'): ZERO_IS_LEGAL,
    ('exemplar', 'seed'): ZERO_IS_LEGAL,
    ('colorization', 'grid'): (0, -1.0, NAN),  # a float (the side of an ab bin) with an int default: 1.5 is legal
    # defaults of None: the type cannot be told from the default
    ('moco', 'hidden_dim'): (0, 1.5, True),
    ('relpos', 'patch'): (0, 1.5, True), ('relpos', 'gap'): (-1, 1.5, True), ('relpos', 'jitter'): (-1, 1.5, True),
    ('jigsaw', 'tile'): (0, 1.5, True), ('pirl', 'tile'): (0, 1.5, True),
    ('context_encoder', 'overlap'): (-1, 1.5, True),
    ('cpc', 'grid'): (1, 1.5, True), ('cpc', 'patch'): (1, 1.5, True), ('cpc', 'jitter'): (-1, 1.5, True),
    ('selfie', 'patch'): (0, 1.5, True),
    ('dino', 'warmup_teacher_temperature'): (0.0, -1.0, NAN),
}

EXTRA = {  # (method, option): bad values on the edges of the valid range, on top of the generic ones
    **{(m, 'temperature'): (0.0,) for m in ('simclr', 'moco', 'mocov2', 'npid', 'pirl', 'cpc', 'swav', 'colorization')},
    ('dino', 'student_temperature'): (0.0,), ('dino', 'teacher_temperature'): (0.0,),
    **{(m, 'momentum'): (1.0,) for m in ('moco', 'mocov2', 'npid', 'pirl', 'dino')},
    ('byol', 'base_momentum'): (1.0,), ('dino', 'center_momentum'): (1.0,), ('dino', 'warmup_fraction'): (1.5,),
    ('swav', 'epsilon'): (0.0,), ('sela', 'epsilon'): (0.0,), ('swav', 'prototypes'): (1,), ('dino', 'outputs'): (1,),
    ('autoencoder', 'decoder_width'): (1,),
    ('rotnet', 'rotations'): (3, 4.0),
    ('relpos', 'upsample'): (0.0,),
    ('jigsaw', 'grid'): (4,), ('jigsaw', 'permutations'): (1, 362881), ('jigsaw', 'upsample'): (0.0,),
    ('jigsaw', 'min_std'): (0.0,),
    ('context_encoder', 'hole'): (0.0, 1.0), ('context_encoder', 'block'): (0.0, 1.5),
    ('context_encoder', 'adversarial'): (1.0,), ('context_encoder', 'hidden_dim'): (2,),
    ('colorization', 'rebalance'): (0.0, 1.5), ('colorization', 'sigma'): (0.0,), ('colorization', 'neighbours'): (10_000,),
    ('counting', 'margin'): (0.0,),
    ('exemplar', 'exemplars'): (1,), ('exemplar', 'rotation'): (181.0,),
    ('selfie', 'masked'): (1, 16), ('selfie', 'grid'): (1,), ('selfie', 'dim'): (130,),  # 130 is no multiple of 4 heads
    ('cpc', 'version'): (3,), ('cpc', 'offsets'): (6,), ('cpc', 'same_image'): (1.5,), ('cpc', 'epoch_fraction'): (0.0, 1.5),
    ('cpc', 'brightness'): (1.5,), ('cpc', 'contrast'): (1.5,),
    ('deepcluster', 'clusters'): (1, NUM_IMAGES + 1), ('sela', 'clusters'): (1, NUM_IMAGES + 1),
    ('npid', 'negatives'): (NUM_IMAGES + 1,),
}


def build(name: str, **options):
    "The method as `ssl_learner` builds it: a fresh ConvNet, 28-px images, the data's mean and std (RGB for colorization)."
    method_class = get_method(name)
    channels = 3 if name == 'colorization' else 1  # colorization refuses grey data
    mean, std = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)) if channels == 3 else ((0.286,), (0.353,))
    if method_class.needs_num_images: options['num_images'] = NUM_IMAGES
    torch.manual_seed(0)
    return method_class(create_encoder('convnet', channels), size=28, mean=mean, std=std, **options)


def kind(default):
    for type_ in (bool, int, float, tuple, str):  # bool before int: True is an int too
        if isinstance(default, type_): return type_
    return None


def bad_cases():
    cases = []
    for name in list_methods():
        own, _ = method_option_names(get_method(name))
        for option, default in own.items():
            values = BAD.get((name, option))
            if values is None:
                if kind(default) is None:  # a None default: the test cannot guess a bad value
                    cases.append(pytest.param(name, option, None, id=f'{name}-{option}-no-bad-value-known'))
                    continue
                values = GENERIC[kind(default)]
            for value in (*values, *EXTRA.get((name, option), ())):
                cases.append(pytest.param(name, option, value, id=f'{name}-{option}={value!r}'))
    return cases


@pytest.mark.parametrize('name', list_methods())
def test_defaults_build(name):
    build(name)


def test_every_table_entry_is_a_real_option():
    "A renamed option must not leave a stale entry that silently tests nothing."
    options = {(name, option) for name in list_methods() for option in method_option_names(get_method(name))[0]}
    assert not (set(BAD) | set(EXTRA)) - options


@pytest.mark.parametrize('name, option, value', bad_cases())
def test_bad_option_is_one_line_usage_error(name, option, value):
    assert value is not None or (name, option) in BAD, \
        f'{name}.{option} defaults to None: add its bad values to BAD in {__file__}'
    try: build(name, **{option: value})
    except UsageError as error: message = str(error)
    else: pytest.fail(f'{name} accepted {option}={value!r}; its constructor must refuse it with a UsageError')
    assert '\n' not in message, message
    assert name.lower() in message.lower() or name.lower() in message.lower().replace(' ', '_'), \
        f'the message does not name the method {name}: {message}'
    assert option in message, f'the message does not name the option {option}: {message}'
    shown = repr(value) if not (isinstance(value, float) and math.isnan(value)) else 'nan'
    assert shown in message or str(value) in message, f'the message does not show the value {value!r}: {message}'

"The smallest options that let every registered method train on 40 images in batches of 16 (for the every-method tests)."
TINY = dict(npid=dict(negatives=16), pirl=dict(negatives=16), deepcluster=dict(clusters=4), sela=dict(clusters=4),
            cpc=dict(epoch_fraction=1.0), exemplar=dict(exemplars=8), moco=dict(queue_size=32),
            mocov2=dict(queue_size=32), swav=dict(prototypes=8, queue_size=32, queue_start=0),
            dino=dict(warmup_teacher_temperature=0.02))  # a warm-up, so that resuming must continue it


def tiny_data(name: str):
    "40 training images (4 per class): grey garments, or colour textures for the method that needs colour."
    from sslcourse.data import get_data
    return get_data('photo_textures', limit=4) if name == 'colorization' else get_data(limit=4)

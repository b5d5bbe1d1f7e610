"""Box-aware augmentation for SSD training, as stateless ops so a seed makes it reproducible.

All functions take an image [H, W, 3] float32 in 0..255, boxes [M, 4] normalized corners
(ymin, xmin, ymax, xmax), classes [M] int32, and a seed [2] int32/int64; boxes move with the pixels.
"""

from __future__ import annotations

import tensorflow as tf

MIN_OBJECT_COVERED = (0.1, 0.3, 0.5, 0.7, 0.9)  # the SSD paper's crop constraints


def random_flip_horizontal(image, boxes, seed):
    """Mirror left-right with probability 0.5."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    boxes = tf.cond(
        flip,
        lambda: tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=-1),
        lambda: boxes,
    )
    return image, boxes


def random_crop(image, boxes, classes, seed, p: float = 0.5):
    """SSD's random crop: with probability ``p``, a crop covering at least a sampled share of some box.

    Boxes whose centre falls outside the crop are dropped; the rest are clipped to it.
    """
    s1, s2, s3 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    do_crop = tf.random.stateless_uniform([], s1) < p
    min_cover = tf.gather(MIN_OBJECT_COVERED, tf.random.stateless_uniform([], s2, 0, len(MIN_OBJECT_COVERED), tf.int32))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.reshape(boxes, [1, -1, 4]),
        seed=s3,
        min_object_covered=min_cover,
        aspect_ratio_range=(0.5, 2.0),
        area_range=(0.1, 1.0),
        max_attempts=50,
        use_image_if_no_bounding_boxes=True,
    )

    def crop():
        h = tf.cast(tf.shape(image)[0], tf.float32)
        w = tf.cast(tf.shape(image)[1], tf.float32)
        y0, x0 = tf.cast(begin[0], tf.float32) / h, tf.cast(begin[1], tf.float32) / w
        ch, cw = tf.cast(size[0], tf.float32) / h, tf.cast(size[1], tf.float32) / w
        cropped = tf.slice(image, begin, size)
        moved = (boxes - tf.stack([y0, x0, y0, x0])) / tf.stack([ch, cw, ch, cw])
        cy, cx = (moved[:, 0] + moved[:, 2]) / 2.0, (moved[:, 1] + moved[:, 3]) / 2.0
        keep = (cy > 0.0) & (cy < 1.0) & (cx > 0.0) & (cx < 1.0)
        kept = tf.clip_by_value(tf.boolean_mask(moved, keep), 0.0, 1.0)
        return cropped, kept, tf.boolean_mask(classes, keep)

    return tf.cond(do_crop, crop, lambda: (image, boxes, classes))


def photometric(image, seed):
    """Brightness, contrast, saturation and hue jitter (the SSD paper's photometric distortions)."""
    s = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    x = image / 255.0
    x = tf.image.stateless_random_brightness(x, 0.125, s[0])
    x = tf.image.stateless_random_contrast(x, 0.5, 1.5, s[1])
    x = tf.image.stateless_random_saturation(x, 0.5, 1.5, s[2])
    x = tf.image.stateless_random_hue(x, 0.05, s[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def augment(image, boxes, classes, seed):
    """The training augmentation: photometric jitter, SSD random crop, horizontal flip."""
    s1, s2, s3 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = photometric(image, s1)
    image, boxes, classes = random_crop(image, boxes, classes, s2)
    image, boxes = random_flip_horizontal(image, boxes, s3)
    return image, boxes, classes

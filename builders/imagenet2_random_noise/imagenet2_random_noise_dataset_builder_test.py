"""imagenet2_random_noise on dummy data: a tiny ImageNet class-folder tree
(JPEGs resized to 224x224).

Every named config is built.
"""

import tensorflow_datasets as tfds

from ntga_tfds.builders.imagenet2_random_noise import (
    imagenet2_random_noise_dataset_builder)


class Imagenet2RandomNoiseTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = imagenet2_random_noise_dataset_builder.Builder
  SPLITS = {"train": 12, "test": 4}


if __name__ == "__main__":
  tfds.testing.test_main()

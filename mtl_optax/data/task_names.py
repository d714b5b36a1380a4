"""Task names and label spaces shared by the model zoo, the data builders and
the training loop (no heavy imports)."""

# CelebA's 40 binary attributes, in tfds' order.
CELEBA_ATTRIBUTES = (
    '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes',
    'Bald', 'Bangs', 'Big_Lips', 'Big_Nose', 'Black_Hair', 'Blond_Hair',
    'Blurry', 'Brown_Hair', 'Bushy_Eyebrows', 'Chubby', 'Double_Chin',
    'Eyeglasses', 'Goatee', 'Gray_Hair', 'Heavy_Makeup', 'High_Cheekbones',
    'Male', 'Mouth_Slightly_Open', 'Mustache', 'Narrow_Eyes', 'No_Beard',
    'Oval_Face', 'Pale_Skin', 'Pointy_Nose', 'Receding_Hairline',
    'Rosy_Cheeks', 'Sideburns', 'Smiling', 'Straight_Hair', 'Wavy_Hair',
    'Wearing_Earrings', 'Wearing_Hat', 'Wearing_Lipstick', 'Wearing_Necklace',
    'Wearing_Necktie', 'Young')

# The 20 coarse classes of CIFAR-100 (each a 5-way task over its fine
# classes), in the dataset's label order.
CIFAR100_COARSE_CLASSES = (
    'aquatic_mammals', 'fish', 'flowers', 'food_containers',
    'fruit_and_vegetables', 'household_electrical_devices',
    'household_furniture', 'insects', 'large_carnivores',
    'large_man-made_outdoor_things', 'large_natural_outdoor_scenes',
    'large_omnivores_and_herbivores', 'medium_mammals',
    'non-insect_invertebrates', 'people', 'reptiles', 'small_mammals', 'trees',
    'vehicles_1', 'vehicles_2')

# Segmentation classes of the dense-prediction datasets.
SEGMENTATION_CLASSES = {'cityscapes': 19, 'cityscapes_mtan': 7, 'nyuv2': 13}

# Office-31 and Office-Home (multi-input: each domain is a task with its own
# images and its own classifier; LibMTL's names and order).
OFFICE31_DOMAINS = ('amazon', 'dslr', 'webcam')
OFFICE_HOME_DOMAINS = ('Art', 'Clipart', 'Product', 'Real_World')
OFFICE_DOMAINS = {'office31': OFFICE31_DOMAINS,
                  'office_home': OFFICE_HOME_DOMAINS}
OFFICE_CLASSES = {'office31': 31, 'office_home': 65}

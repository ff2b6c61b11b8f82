"""The label conventions every part of s4kit shares: the ignore index and the class names."""

# label value of pixels no loss or metric counts: VOC's object borders, crop padding,
# pseudo-labels below a threshold
IGNORE_INDEX = 255

CLASS_NAMES = {
    "digits": ("background",) + tuple(str(d) for d in range(10)),
    "pascal": ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"),
    "cityscapes": ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                   "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                   "bicycle"),
}

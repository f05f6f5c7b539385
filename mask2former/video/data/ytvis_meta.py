"""Categories of YouTube-VIS 2019 and 2021 (40 classes each; dataset ids 1..40, colours of the
original project's visualiser)."""
from typing import Any, Dict, List, Tuple

__all__ = ["YTVIS_CATEGORIES_2019", "YTVIS_CATEGORIES_2021", "ytvis_metadata"]

# (dataset id, name, RGB colour)
YTVIS_CATEGORIES_2019: List[Tuple[int, str, Tuple[int, int, int]]] = [
    (1, "person", (220, 20, 60)), (2, "giant_panda", (0, 82, 0)), (3, "lizard", (119, 11, 32)),
    (4, "parrot", (165, 42, 42)), (5, "skateboard", (134, 134, 103)), (6, "sedan", (0, 0, 142)),
    (7, "ape", (255, 109, 65)), (8, "dog", (0, 226, 252)), (9, "snake", (5, 121, 0)),
    (10, "monkey", (0, 60, 100)), (11, "hand", (250, 170, 30)), (12, "rabbit", (100, 170, 30)),
    (13, "duck", (179, 0, 194)), (14, "cat", (255, 77, 255)), (15, "cow", (120, 166, 157)),
    (16, "fish", (73, 77, 174)), (17, "train", (0, 80, 100)), (18, "horse", (182, 182, 255)),
    (19, "turtle", (0, 143, 149)), (20, "bear", (174, 57, 255)), (21, "motorbike", (0, 0, 230)),
    (22, "giraffe", (72, 0, 118)), (23, "leopard", (255, 179, 240)), (24, "fox", (0, 125, 92)),
    (25, "deer", (209, 0, 151)), (26, "owl", (188, 208, 182)), (27, "surfboard", (145, 148, 174)),
    (28, "airplane", (106, 0, 228)), (29, "truck", (0, 0, 70)), (30, "zebra", (199, 100, 0)),
    (31, "tiger", (166, 196, 102)), (32, "elephant", (110, 76, 0)), (33, "snowboard", (133, 129, 255)),
    (34, "boat", (0, 0, 192)), (35, "shark", (183, 130, 88)), (36, "mouse", (130, 114, 135)),
    (37, "frog", (107, 142, 35)), (38, "eagle", (0, 228, 0)), (39, "earless_seal", (174, 255, 243)),
    (40, "tennis_racket", (255, 208, 186)),
]

YTVIS_CATEGORIES_2021: List[Tuple[int, str, Tuple[int, int, int]]] = [
    (1, "airplane", (106, 0, 228)), (2, "bear", (174, 57, 255)), (3, "bird", (255, 109, 65)),
    (4, "boat", (0, 0, 192)), (5, "car", (0, 0, 142)), (6, "cat", (255, 77, 255)),
    (7, "cow", (120, 166, 157)), (8, "deer", (209, 0, 151)), (9, "dog", (0, 226, 252)),
    (10, "duck", (179, 0, 194)), (11, "earless_seal", (174, 255, 243)), (12, "elephant", (110, 76, 0)),
    (13, "fish", (73, 77, 174)), (14, "flying_disc", (250, 170, 30)), (15, "fox", (0, 125, 92)),
    (16, "frog", (107, 142, 35)), (17, "giant_panda", (0, 82, 0)), (18, "giraffe", (72, 0, 118)),
    (19, "horse", (182, 182, 255)), (20, "leopard", (255, 179, 240)), (21, "lizard", (119, 11, 32)),
    (22, "monkey", (0, 60, 100)), (23, "motorbike", (0, 0, 230)), (24, "mouse", (130, 114, 135)),
    (25, "parrot", (165, 42, 42)), (26, "person", (220, 20, 60)), (27, "rabbit", (100, 170, 30)),
    (28, "shark", (183, 130, 88)), (29, "skateboard", (134, 134, 103)), (30, "snake", (5, 121, 0)),
    (31, "snowboard", (133, 129, 255)), (32, "squirrel", (188, 208, 182)), (33, "surfboard", (145, 148, 174)),
    (34, "tennis_racket", (255, 208, 186)), (35, "tiger", (166, 196, 102)), (36, "train", (0, 80, 100)),
    (37, "truck", (0, 0, 70)), (38, "turtle", (0, 143, 149)), (39, "whale", (0, 228, 0)),
    (40, "zebra", (199, 100, 0)),
]


def ytvis_metadata(year: int) -> Dict[str, Any]:
    """``thing_classes``, ``thing_colors`` and ``thing_dataset_id_to_contiguous_id`` (ids 1..40 ->
    0..39) of YouTube-VIS ``year`` (2019 or 2021).

    Raises:
        ValueError: another year.
    """
    tables = {2019: YTVIS_CATEGORIES_2019, 2021: YTVIS_CATEGORIES_2021}
    if year not in tables:
        raise ValueError(f"YouTube-VIS year must be 2019 or 2021, got {year}")
    categories = tables[year]
    return {
        "thing_classes": [name for _, name, _ in categories],
        "thing_colors": [list(color) for _, _, color in categories],
        "thing_dataset_id_to_contiguous_id": {cid: i for i, (cid, _, _) in enumerate(categories)},
    }

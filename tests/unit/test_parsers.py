"""Label-file parsers: exact records for valid files, and a rejection (never an exception) for bad ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_jobs.parsers import (
    FORMATS,
    LABEL_EXTENSIONS,
    coco,
    csv as csv_parser,
    is_label_file,
    parse_label_file,
    voc,
    yolo,
)
from beam_jobs.records import (
    BOX,
    IMAGE,
    INVALID_COORDINATES,
    LABEL_FILE,
    MALFORMED_LABEL_FILE,
    MULTIPLE_LABELS,
    UNKNOWN_CLASS,
    UNKNOWN_IMAGE_ID,
    UNSAFE_XML,
    BoxLabel,
    LabelRecord,
    ParseResult,
    Rejection,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
RACCOON = SHARED / "datasets" / "raccoon"


def only_file_rejection(result: ParseResult) -> Rejection:
    assert result.records == ()
    assert len(result.rejections) == 1
    rejection = result.rejections[0]
    assert rejection.kind == LABEL_FILE
    return rejection


# --------------------------------------------------------------------------------------------- VOC

VOC = b"""<?xml version="1.0" encoding="utf-8"?>
<annotation>
  <folder>images</folder>
  <filename>a.jpg</filename>
  <size><width>640</width><height>480</height><depth>3</depth></size>
  <object>
    <name> cat </name><difficult>1</difficult>
    <bndbox><xmin>10</xmin><ymin>20.5</ymin><xmax>110</xmax><ymax>220</ymax></bndbox>
  </object>
  <object>
    <name>dog</name>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox>
  </object>
</annotation>
"""


def test_voc_valid():
    assert voc.parse("s3://b/labels/a.xml", VOC) == ParseResult(
        records=(
            LabelRecord(
                image_name="a.jpg",
                source="s3://b/labels/a.xml",
                width=640,
                height=480,
                boxes=(
                    BoxLabel(10.0, 20.5, 110.0, 220.0, "cat", difficult=True, source="s3://b/labels/a.xml#object0"),
                    BoxLabel(1.0, 2.0, 3.0, 4.0, "dog", difficult=False, source="s3://b/labels/a.xml#object1"),
                ),
            ),
        )
    )


def test_voc_without_objects_is_a_negative_example():
    data = b"<annotation><filename>neg.png</filename><size><width>10</width><height>20</height></size></annotation>"
    result = voc.parse("neg.xml", data)
    assert result == ParseResult(records=(LabelRecord("neg.png", "neg.xml", (), 10, 20),))


def test_voc_missing_filename_and_bad_size_fall_back():
    data = b"<annotation><filename> </filename><size><width>abc</width><height>-3</height></size></annotation>"
    (record,) = voc.parse("gs://bucket/dir/img_7.xml", data).records
    assert (record.image_name, record.key, record.width, record.height) == ("img_7", "img_7", None, None)
    (record,) = voc.parse("x/no_size.xml", b"<annotation/>").records
    assert (record.image_name, record.width, record.height, record.boxes) == ("no_size", None, None, ())


@pytest.mark.parametrize(
    "bndbox, needle",
    [
        (b"<xmin>nan</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>", "xmin"),
        (b"<xmin>1</xmin><ymin>inf</ymin><xmax>3</xmax><ymax>4</ymax>", "ymin"),
        (b"<xmin>1</xmin><ymin>2</ymin><ymax>4</ymax>", "xmax"),
        (b"<xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>four</ymax>", "four"),
    ],
)
def test_voc_bad_coordinates_reject_the_box(bndbox, needle):
    data = (
        b"<annotation><filename>a.jpg</filename>"
        b"<object><name>ok</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>"
        b"<object><name>cat</name><bndbox>" + bndbox + b"</bndbox></object></annotation>"
    )
    (record,) = voc.parse("a.xml", data).records
    assert [b.label for b in record.boxes] == ["ok"]
    (rejection,) = record.rejections
    assert (rejection.kind, rejection.reason, rejection.source) == (BOX, INVALID_COORDINATES, "a.xml#object1")
    assert needle in rejection.detail


def test_voc_object_without_name_or_bndbox():
    data = (
        b"<annotation><filename>a.jpg</filename>"
        b"<object><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>"
        b"<object><name>cat</name></object></annotation>"
    )
    (record,) = voc.parse("a.xml", data).records
    assert record.boxes == ()
    assert record.rejections == (
        Rejection("a.xml#object0", UNKNOWN_CLASS, "object has no <name>", kind=BOX),
        Rejection("a.xml#object1", INVALID_COORDINATES, "object has no <bndbox>", kind=BOX),
    )


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename></annotation>
"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>&lol4;</filename></annotation>
"""


@pytest.mark.parametrize("data", [XXE, BILLION_LAUGHS], ids=["xxe", "billion-laughs"])
def test_voc_entities_are_refused(data):
    rejection = only_file_rejection(voc.parse("evil.xml", data))
    assert (rejection.reason, rejection.source) == (UNSAFE_XML, "evil.xml")
    assert "Entit" in rejection.detail  # EntitiesForbidden(...)
    assert "root:" not in rejection.detail  # nothing from /etc/passwd leaked into the detail


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"<html><body>not voc</body></html>", "<html>"),
        (b"<annotation><filename>a.jpg</filename>", "well-formed"),
        (b"", "well-formed"),
        (b"<annotation><filename>\xff\xfe</filename></annotation>", "well-formed"),  # not UTF-8
        (
            b'<?xml version="1.0" encoding="u-tf-8"?><annotation/>',
            "u-tf-8",
        ),  # an unknown encoding (found by hypothesis)
    ],
)
def test_voc_malformed(data, needle):
    rejection = only_file_rejection(voc.parse("bad.xml", data))
    assert rejection.reason == MALFORMED_LABEL_FILE
    assert needle in rejection.detail


def test_voc_real_raccoon_file():
    path = RACCOON / "annotations" / "raccoon-1.xml"
    if not path.exists():
        pytest.skip(f"{path} not present")
    (record,) = voc.parse(str(path), path.read_bytes()).records
    assert (record.image_name, record.width, record.height, record.rejections) == ("raccoon-1.jpg", 650, 417, ())
    (box,) = record.boxes
    assert (box.xmin, box.ymin, box.xmax, box.ymax, box.label, box.normalized) == (81, 88, 522, 408, "raccoon", False)


# -------------------------------------------------------------------------------------------- COCO

COCO = b"""{
  "images": [
    {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
    {"id": 2, "file_name": "empty.jpg", "width": 100, "height": 50},
    {"id": 3, "file_name": "b.jpg"}
  ],
  "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
  "annotations": [
    {"id": 10, "image_id": 3, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 0},
    {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 20, 100.5, 200], "iscrowd": 0},
    {"id": 12, "image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "iscrowd": 1}
  ]
}"""


def test_coco_valid_with_negative_image():
    assert coco.parse("c.json", COCO) == ParseResult(
        records=(
            LabelRecord(
                "a.jpg",
                "c.json",
                (
                    BoxLabel(10.0, 20.0, 110.5, 220.0, "cat", difficult=False, source="c.json#annotation11"),
                    BoxLabel(1.0, 2.0, 4.0, 6.0, "dog", difficult=True, source="c.json#annotation12"),
                ),
                640,
                480,
            ),
            LabelRecord("empty.jpg", "c.json", (), 100, 50),  # no annotations: a negative example
            LabelRecord("b.jpg", "c.json", (BoxLabel(0.0, 0.0, 5.0, 5.0, "dog", source="c.json#annotation10"),)),
        )
    )


def coco_doc(annotations: str, images: str = '[{"id": 1, "file_name": "a.jpg"}]') -> bytes:
    return (
        f'{{"images": {images}, "categories": [{{"id": 1, "name": "cat"}}], "annotations": {annotations}}}'
    ).encode()


def test_coco_annotation_for_missing_image_id():
    result = coco.parse("c.json", coco_doc('[{"id": 5, "image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]}]'))
    assert result.records == (LabelRecord("a.jpg", "c.json"),)
    (rejection,) = result.rejections
    assert (rejection.kind, rejection.reason, rejection.source) == (BOX, UNKNOWN_IMAGE_ID, "c.json#annotation5")
    assert "99" in rejection.detail


def test_coco_unknown_category():
    result = coco.parse("c.json", coco_doc('[{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]'))
    assert result.rejections == ()
    (record,) = result.records
    assert record.boxes == ()
    (rejection,) = record.rejections
    assert (rejection.kind, rejection.reason, rejection.source) == (BOX, UNKNOWN_CLASS, "c.json#annotation5")
    assert "7" in rejection.detail


@pytest.mark.parametrize("bbox", ["[0, 0, 1]", "[0, 0, 1, NaN]", '[0, "a", 1, 1]', "null", "[0, 0, 1, Infinity]"])
def test_coco_bad_bbox(bbox):
    data = coco_doc(f'[{{"id": 5, "image_id": 1, "category_id": 1, "bbox": {bbox}}}]')
    (record,) = coco.parse("c.json", data).records
    assert record.boxes == ()
    assert [(r.kind, r.reason) for r in record.rejections] == [(BOX, INVALID_COORDINATES)]


def test_coco_duplicate_file_name_keeps_the_first():
    images = '[{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}]'
    annotations = (
        '[{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},'
        ' {"id": 6, "image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2]}]'
    )
    result = coco.parse("c.json", coco_doc(annotations, images))
    (record,) = result.records
    assert [b.source for b in record.boxes] == ["c.json#annotation5"]
    (rejection,) = result.rejections
    assert (rejection.kind, rejection.reason) == (IMAGE, MULTIPLE_LABELS)
    assert "1" in rejection.detail and "2" in rejection.detail and "a.jpg" in rejection.detail


def test_coco_annotations_key_is_optional():
    result = coco.parse("c.json", b'{"images": [{"id": 1, "file_name": "a.jpg", "width": 3, "height": 4}]}')
    assert result == ParseResult(records=(LabelRecord("a.jpg", "c.json", (), 3, 4),))


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"{not json", "JSON"),
        (b"[]", "list"),
        (b'{"annotations": []}', "images"),
        (b'{"images": {}}', "images"),
        (b"\xff\xfe\x00", "UTF-8"),
        (b"", "JSON"),
    ],
)
def test_coco_malformed(data, needle):
    rejection = only_file_rejection(coco.parse("c.json", data))
    assert rejection.reason == MALFORMED_LABEL_FILE
    assert needle in rejection.detail


# --------------------------------------------------------------------------------------------- CSV

CSV = b"""filename,width,height,class,xmin,ymin,xmax,ymax
a.jpg,640,480,cat,10,20,110,220.5
b.jpg,,,dog,1,2,3,4
a.jpg,640,480,dog,0,0,5,5
"""


def test_csv_groups_rows_by_filename_in_first_appearance_order():
    assert csv_parser.parse("l.csv", CSV) == ParseResult(
        records=(
            LabelRecord(
                "a.jpg",
                "l.csv",
                (
                    BoxLabel(10.0, 20.0, 110.0, 220.5, "cat", source="l.csv#row2"),
                    BoxLabel(0.0, 0.0, 5.0, 5.0, "dog", source="l.csv#row4"),
                ),
                640,
                480,
            ),
            LabelRecord("b.jpg", "l.csv", (BoxLabel(1.0, 2.0, 3.0, 4.0, "dog", source="l.csv#row3"),)),
        )
    )


def test_csv_bom_aliases_and_case_insensitive_header():
    data = "\ufeff Image ,LABEL,XMin,ymin,xmax,YMAX\r\nx/a.png,cat,1,2,3,4\r\n".encode("utf-8")
    (record,) = csv_parser.parse("l.csv", data).records
    assert record == LabelRecord("x/a.png", "l.csv", (BoxLabel(1.0, 2.0, 3.0, 4.0, "cat", source="l.csv#row2"),))
    data = b"path,label,xmin,ymin,xmax,ymax\na.png,cat,1,2,3,4\n"
    assert csv_parser.parse("l.csv", data).records[0].image_name == "a.png"


def test_csv_negative_row():
    data = b"filename,class,xmin,ymin,xmax,ymax,width,height\nneg.jpg,,,,,,30,40\n\npos.jpg,cat,1,2,3,4,,\n"
    result = csv_parser.parse("l.csv", data)
    assert result == ParseResult(
        records=(
            LabelRecord("neg.jpg", "l.csv", (), 30, 40),
            LabelRecord("pos.jpg", "l.csv", (BoxLabel(1.0, 2.0, 3.0, 4.0, "cat", source="l.csv#row4"),)),
        )
    )


@pytest.mark.parametrize(
    "coords, needle", [("nan,2,3,4", "xmin"), ("1,,3,4", "ymin"), ("1,2,x,4", "'x'"), ("1,2,3,inf", "ymax")]
)
def test_csv_bad_coordinates(coords, needle):
    data = f"filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,{coords}\na.jpg,cat,1,2,3,4\n".encode()
    (record,) = csv_parser.parse("l.csv", data).records
    assert [b.source for b in record.boxes] == ["l.csv#row3"]
    (rejection,) = record.rejections
    assert (rejection.kind, rejection.reason, rejection.source) == (BOX, INVALID_COORDINATES, "l.csv#row2")
    assert needle in rejection.detail


def test_csv_class_missing_but_coordinates_present():
    (record,) = csv_parser.parse("l.csv", b"filename,class,xmin,ymin,xmax,ymax\na.jpg,,1,2,3,4\n").records
    assert [(r.kind, r.reason) for r in record.rejections] == [(BOX, UNKNOWN_CLASS)]


def test_csv_width_height_come_from_the_first_row_with_valid_values():
    data = b"filename,class,xmin,ymin,xmax,ymax,width,height\na.jpg,cat,1,2,3,4,0,x\na.jpg,cat,1,2,3,4,8,9\n"
    (record,) = csv_parser.parse("l.csv", data).records
    assert (record.width, record.height) == (8, 9)


def test_csv_wrong_field_count():
    data = b"filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,2,3\n,cat,1,2,3\nb.jpg,cat,1,2,3,4\n"
    result = csv_parser.parse("l.csv", data)
    assert [r.image_name for r in result.records] == ["a.jpg", "b.jpg"]
    assert result.records[0].rejections == (
        Rejection("l.csv#row2", INVALID_COORDINATES, "row has 5 fields, header has 6", kind=BOX),
    )
    assert result.rejections == (
        Rejection("l.csv#row3", MALFORMED_LABEL_FILE, "row has 5 fields, header has 6", kind=LABEL_FILE),
    )


def test_csv_missing_columns():
    rejection = only_file_rejection(csv_parser.parse("l.csv", b"filename,class,x,y\na.jpg,cat,1,2\n"))
    assert rejection.reason == MALFORMED_LABEL_FILE
    assert rejection.detail == "missing required column(s): xmin, ymin, xmax, ymax"


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\xff\xfe\x00", b'filename,"class\n'])
def test_csv_malformed(data):
    rejection = only_file_rejection(csv_parser.parse("l.csv", data))
    assert rejection.reason == MALFORMED_LABEL_FILE


def test_csv_real_raccoon_file():
    path = RACCOON / "data" / "raccoon_labels.csv"
    if not path.exists():
        pytest.skip(f"{path} not present")
    result = csv_parser.parse(str(path), path.read_bytes())
    assert result.rejections == ()
    assert len(result.records) == 200
    assert sum(len(r.boxes) for r in result.records) == 217
    assert {b.label for r in result.records for b in r.boxes} == {"raccoon"}
    assert all(r.rejections == () and r.width and r.height for r in result.records)
    first = result.records[0]
    assert (first.image_name, first.width, first.height) == ("raccoon-1.jpg", 650, 417)


# -------------------------------------------------------------------------------------------- YOLO

NAMES = ["cat", "dog"]


def test_yolo_normalized_conversion():
    data = b"# comment\n0 0.5 0.5 0.25 0.4\n\n1 0.1 0.2 0.3 0.2\n"
    result = yolo.parse("labels/img_1.txt", data, NAMES)
    (record,) = result.records
    assert (record.image_name, record.key, record.source, record.width, record.height) == (
        "img_1",
        "img_1",
        "labels/img_1.txt",
        None,
        None,
    )
    assert record.rejections == ()
    first, second = record.boxes
    assert (first.label, first.normalized, first.source) == ("cat", True, "labels/img_1.txt#line2")
    assert (first.xmin, first.ymin, first.xmax, first.ymax) == pytest.approx((0.375, 0.3, 0.625, 0.7))
    assert (second.label, second.source) == ("dog", "labels/img_1.txt#line4")
    assert (second.xmin, second.ymin, second.xmax, second.ymax) == pytest.approx((-0.05, 0.1, 0.25, 0.3))


def test_yolo_image_name_override_and_empty_file():
    assert yolo.parse("a.txt", b"", NAMES, image_name="a.png") == ParseResult(records=(LabelRecord("a.png", "a.txt"),))
    assert yolo.parse("a.txt", b"\n  \n", NAMES).records == (LabelRecord("a", "a.txt"),)


@pytest.mark.parametrize(
    "line, reason, needle",
    [
        ("2 0.5 0.5 0.1 0.1", UNKNOWN_CLASS, "2"),
        ("-1 0.5 0.5 0.1 0.1", UNKNOWN_CLASS, "-1"),
        ("cat 0.5 0.5 0.1 0.1", UNKNOWN_CLASS, "'cat'"),
        ("0.5 0.5 0.5 0.1 0.1", UNKNOWN_CLASS, "0.5"),
        ("0 0.5 abc 0.1 0.1", INVALID_COORDINATES, "cy"),
        ("0 nan 0.5 0.1 0.1", INVALID_COORDINATES, "cx"),
        ("0 0.5 0.5 inf 0.1", INVALID_COORDINATES, "w"),
        ("0 0.5 0.5 0.1", INVALID_COORDINATES, "4 fields"),
        ("0 0.5 0.5 0.1 0.1 0.9", INVALID_COORDINATES, "confidence"),
        ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2", INVALID_COORDINATES, "segmentation"),
    ],
)
def test_yolo_bad_lines(line, reason, needle):
    data = f"0 0.5 0.5 0.1 0.1\n{line}\n".encode()
    (record,) = yolo.parse("a.txt", data, NAMES).records
    assert [b.source for b in record.boxes] == ["a.txt#line1"]
    (rejection,) = record.rejections
    assert (rejection.kind, rejection.reason, rejection.source) == (BOX, reason, "a.txt#line2")
    assert needle in rejection.detail


def test_yolo_out_of_range_values_pass_through():
    (record,) = yolo.parse("a.txt", b"0 1.5 0.5 0 -0.2\n", NAMES).records
    (box,) = record.boxes
    assert (box.xmin, box.xmax) == (1.5, 1.5) and box.ymin > box.ymax


def test_yolo_not_utf8():
    rejection = only_file_rejection(yolo.parse("a.txt", b"0 \xff 0.5 0.1 0.1\n", NAMES))
    assert rejection.reason == MALFORMED_LABEL_FILE


def test_load_class_names_txt():
    assert yolo.load_class_names("classes.txt", b"\xef\xbb\xbfcat\n\n dog \r\ntraffic light\n") == [
        "cat",
        "dog",
        "traffic light",
    ]


def test_load_class_names_yaml_list():
    assert yolo.load_class_names("data.yaml", b"path: x\nnc: 2\nnames: [cat, dog]\n") == ["cat", "dog"]
    assert yolo.load_class_names("data.YML", b"names:\n  - cat\n  - dog\n") == ["cat", "dog"]


def test_load_class_names_yaml_dict():
    assert yolo.load_class_names("data.yaml", b"names:\n  1: dog\n  0: cat\n  2: bird\n") == ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    "source, data, needle",
    [
        ("data.yaml", b"names:\n  0: cat\n  2: bird\n", "gaps"),
        ("data.yaml", b"nc: 2\n", "no class names"),
        ("data.yaml", b"names: []\n", "no class names"),
        ("data.yaml", b"names: [cat, '']\n", "empty"),
        ("data.yaml", b"names: [cat, null]\n", "empty"),
        ("data.yaml", b"names: [unclosed\n", "YAML"),
        ("data.yaml", b"- cat\n", "no class names"),
        ("data.yaml", b"names:\n  a: cat\n", "indices"),
        ("classes.txt", b"\n \n", "no class names"),
        ("classes.txt", b"\xff", "UTF-8"),
    ],
)
def test_load_class_names_errors(source, data, needle):
    with pytest.raises(ValueError, match=needle):
        yolo.load_class_names(source, data)


# ---------------------------------------------------------------------------------------- dispatch


def test_dispatch():
    assert FORMATS == ("voc", "coco", "csv", "yolo")
    assert set(LABEL_EXTENSIONS) == set(FORMATS)
    assert parse_label_file("voc", "a.xml", VOC) == voc.parse("a.xml", VOC)
    assert parse_label_file("coco", "c.json", COCO) == coco.parse("c.json", COCO)
    assert parse_label_file("csv", "l.csv", CSV) == csv_parser.parse("l.csv", CSV)
    assert parse_label_file("yolo", "a.txt", b"1 0.5 0.5 0.2 0.2", class_names=NAMES).records[0].boxes[0].label == "dog"
    with pytest.raises(ValueError, match="class_names"):
        parse_label_file("yolo", "a.txt", b"")
    with pytest.raises(ValueError, match="unknown label format"):
        parse_label_file("kitti", "a.txt", b"")


def test_csv_module_name_does_not_shadow_stdlib():
    import csv as stdlib_csv

    assert csv_parser.csv is stdlib_csv and hasattr(stdlib_csv, "DictReader")


@pytest.mark.parametrize(
    "fmt, path, expected",
    [
        ("voc", "s3://b/labels/A.XML", True),
        ("voc", "labels/a.json", False),
        ("coco", "instances_val.json", True),
        ("csv", "labels.csv", True),
        ("yolo", "labels/img_1.txt", True),
        ("yolo", "labels/classes.txt", False),
        ("yolo", "labels/data.yaml", False),
    ],
)
def test_is_label_file(fmt, path, expected):
    assert is_label_file(fmt, path) is expected


# ------------------------------------------------------------------------------- never raise (fuzz)

_PARSERS = {
    "voc": lambda data: voc.parse("f.xml", data),
    "coco": lambda data: coco.parse("f.json", data),
    "csv": lambda data: csv_parser.parse("f.csv", data),
    "yolo": lambda data: yolo.parse("f.txt", data, NAMES),
}
_SEEDS = {"voc": VOC, "coco": COCO, "csv": CSV, "yolo": b"0 0.5 0.5 0.25 0.4\n1 0.1 0.2 0.3 0.2\n"}


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0), junk=st.binary(max_size=12), pos=st.integers(min_value=0))
def test_parsers_never_raise_on_mangled_input(fmt, cut, junk, pos):
    seed = _SEEDS[fmt]
    cut %= len(seed) + 1
    pos %= cut + 1
    data = seed[:pos] + junk + seed[pos:cut]
    result = _PARSERS[fmt](data)
    assert isinstance(result, ParseResult)
    for record in result.records:
        for box in record.boxes:
            assert all(math.isfinite(v) for v in (box.xmin, box.ymin, box.xmax, box.ymax))

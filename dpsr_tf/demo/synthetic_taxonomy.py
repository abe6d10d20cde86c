"""The product world of the synthetic catalog: categories, product types, brands, colours.

Words are chosen so that a two-tower model can learn the signal: titles use a product type's
name or one of its synonyms, queries use names, synonyms, brands and colours in English or
Chinese, and a few terms are deliberately polysemous (POLYSEMY): 'apple' / '苹果' is a brand of
phones and laptops and a fruit, 'blackberry' / '黑莓' a phone brand and a fruit, '小米' (Xiaomi)
a phone brand and millet, 'mouse' a computer mouse and a cat toy.

User segments tilt category interest (CATEGORY_TILT) and brands have price tiers, so a user's
gender and purchase power shift what they click (dpsr_tf/demo/synthetic_catalog.py).
"""
import dataclasses
from typing import Dict, Optional, Tuple

TIERS = ("budget", "mid", "premium")
GENDERS = ("men", "women", "unisex")
USER_GENDERS = ("m", "f")
PURCHASE_POWER = ("low", "mid", "high")        # index i prefers TIERS[i]
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45+")

COLORS = (("black", "黑色"), ("white", "白色"), ("red", "红色"), ("blue", "蓝色"),
          ("silver", "银色"), ("gold", "金色"), ("green", "绿色"), ("pink", "粉色"))
TIER_WORDS = {"budget": (("lite", "经济款"), ("basic", "入门款"), ("value", "实惠装")),
              "mid": (("", ""),),
              "premium": (("pro", "旗舰款"), ("premium", "高端"), ("deluxe", "豪华版"))}
GENDER_WORDS = {"men": ("men's", "男款"), "women": ("women's", "女款"), "unisex": ("", "")}


@dataclasses.dataclass(frozen=True)
class ProductType:
    """A kind of product. `key` is unique; names are what titles and queries say."""

    key: str
    en: str
    zh: str
    en_synonyms: Tuple[str, ...] = ()
    zh_synonyms: Tuple[str, ...] = ()
    gender: Optional[str] = None            # "women" = only women's products


@dataclasses.dataclass(frozen=True)
class Category:
    key: str
    zh: str
    types: Tuple[ProductType, ...]
    brands: Tuple[str, ...]
    attributes: Tuple[Tuple[str, str], ...]  # (en, zh) extra title words
    colored: bool = True
    gendered: bool = False
    weight: float = 1.0                     # base popularity


@dataclasses.dataclass(frozen=True)
class Brand:
    key: str
    en: str
    zh: str
    tier_bias: int = 1                      # index into TIERS the brand leans to


BRANDS = {b.key: b for b in (
    Brand("apple", "Apple", "苹果", 2), Brand("samsung", "Samsung", "三星", 1),
    Brand("xiaomi", "Xiaomi", "小米", 0), Brand("huawei", "Huawei", "华为", 1),
    Brand("blackberry", "BlackBerry", "黑莓", 1), Brand("oppo", "Oppo", "欧珀", 0),
    Brand("lenovo", "Lenovo", "联想", 1), Brand("dell", "Dell", "戴尔", 1),
    Brand("hp", "HP", "惠普", 1), Brand("logitech", "Logitech", "罗技", 1),
    Brand("dole", "Dole", "都乐", 1), Brand("zespri", "Zespri", "佳沛", 2),
    Brand("sunkist", "Sunkist", "新奇士", 1), Brand("freshfarm", "FreshFarm", "鲜农场", 0),
    Brand("arawana", "Arawana", "金龙鱼", 0), Brand("quaker", "Quaker", "桂格", 1),
    Brand("nike", "Nike", "耐克", 2), Brand("adidas", "Adidas", "阿迪达斯", 2),
    Brand("puma", "Puma", "彪马", 1), Brand("lining", "Li-Ning", "李宁", 0),
    Brand("anta", "Anta", "安踏", 0), Brand("uniqlo", "Uniqlo", "优衣库", 0),
    Brand("zara", "Zara", "飒拉", 1), Brand("hm", "H&M", "海恩斯莫里斯", 0),
    Brand("loreal", "L'Oreal", "欧莱雅", 1), Brand("esteelauder", "Estee Lauder", "雅诗兰黛", 2),
    Brand("lancome", "Lancome", "兰蔻", 2), Brand("maybelline", "Maybelline", "美宝莲", 0),
    Brand("coach", "Coach", "蔻驰", 2), Brand("samsonite", "Samsonite", "新秀丽", 1),
    Brand("haier", "Haier", "海尔", 1), Brand("midea", "Midea", "美的", 0),
    Brand("gree", "Gree", "格力", 1), Brand("lg", "LG", "乐金", 1),
    Brand("dewalt", "DeWalt", "得伟", 2), Brand("bosch", "Bosch", "博世", 1),
    Brand("makita", "Makita", "牧田", 1), Brand("blackdecker", "Black+Decker", "百得", 0),
    Brand("supor", "Supor", "苏泊尔", 0), Brand("zwilling", "Zwilling", "双立人", 2),
    Brand("tefal", "Tefal", "特福", 1), Brand("nestle", "Nestle", "雀巢", 1),
    Brand("starbucks", "Starbucks", "星巴克", 2), Brand("lipton", "Lipton", "立顿", 0),
    Brand("purina", "Purina", "普瑞纳", 1), Brand("royalcanin", "Royal Canin", "皇家", 2),
    Brand("lego", "LEGO", "乐高", 2), Brand("mattel", "Mattel", "美泰", 1),
)}

_T = ProductType
CATEGORIES = (
    Category("phones", "手机", (
        _T("smartphone", "smartphone", "手机", ("cell phone", "mobile phone"), ("智能手机", "移动电话")),
        _T("phone_case", "phone case", "手机壳", ("phone cover",), ("保护壳",)),
        _T("charger", "charger", "充电器", ("power adapter",), ("充电头",)),
    ), ("apple", "samsung", "xiaomi", "huawei", "blackberry", "oppo"),
        (("128GB", "128GB"), ("256GB", "256GB"), ("5G", "5G"), ("dual sim", "双卡")), weight=2.0),
    Category("computers", "电脑", (
        _T("laptop", "laptop", "笔记本电脑", ("notebook computer",), ("笔记本",)),
        _T("computer_mouse", "mouse", "鼠标", ("computer mouse", "wireless mouse"), ("无线鼠标",)),
        _T("keyboard", "keyboard", "键盘", ("mechanical keyboard",), ("机械键盘",)),
        _T("monitor", "monitor", "显示器", ("display screen",), ("屏幕",)),
    ), ("apple", "lenovo", "dell", "hp", "logitech", "huawei", "xiaomi"),
        (("16GB RAM", "16G内存"), ("USB-C", "USB-C"), ("27 inch", "27英寸"), ("bluetooth", "蓝牙")),
        weight=1.5),
    Category("fruit", "水果", (
        _T("apple_fruit", "apple", "苹果", ("fresh apples", "red apples"), ("红富士",)),
        _T("banana", "banana", "香蕉", ("bananas",), ("芭蕉",)),
        _T("orange", "orange", "橙子", ("navel orange",), ("脐橙",)),
        _T("blackberry_fruit", "blackberry", "黑莓", ("blackberries",), ("黑莓果",)),
        _T("kiwi", "kiwi", "猕猴桃", ("kiwifruit",), ("奇异果",)),
    ), ("dole", "zespri", "sunkist", "freshfarm"),
        (("1kg", "1公斤"), ("2.5kg", "5斤"), ("organic", "有机"), ("gift box", "礼盒")),
        colored=False, weight=1.2),
    Category("grains", "粮油", (
        _T("millet", "millet", "小米", ("yellow millet",), ("黄小米",)),
        _T("rice", "rice", "大米", ("jasmine rice",), ("香米",)),
        _T("oats", "oats", "燕麦", ("oatmeal", "rolled oats"), ("燕麦片",)),
    ), ("arawana", "quaker", "freshfarm"),
        (("5kg", "5公斤"), ("10kg", "10公斤"), ("organic", "有机")), colored=False, weight=0.8),
    Category("shoes", "鞋", (
        _T("running_shoes", "running shoes", "跑步鞋", ("sneakers", "trainers"), ("运动鞋", "跑鞋")),
        _T("boots", "boots", "靴子", ("ankle boots",), ("短靴",)),
        _T("sandals", "sandals", "凉鞋", ("slides",), ("拖鞋",)),
    ), ("nike", "adidas", "puma", "lining", "anta"),
        (("size 40", "40码"), ("size 42", "42码"), ("breathable", "透气"), ("waterproof", "防水")),
        gendered=True, weight=1.5),
    Category("clothing", "服装", (
        _T("tshirt", "t-shirt", "T恤", ("tee", "tee shirt"), ("短袖",)),
        _T("jacket", "jacket", "夹克", ("coat", "windbreaker"), ("外套",)),
        _T("jeans", "jeans", "牛仔裤", ("denim pants",), ("牛仔长裤",)),
        _T("dress", "dress", "连衣裙", ("maxi dress",), ("裙子",), gender="women"),
    ), ("uniqlo", "zara", "hm", "nike", "adidas", "puma"),
        (("cotton", "纯棉"), ("slim fit", "修身"), ("size M", "M码"), ("size L", "L码")),
        gendered=True, weight=1.5),
    Category("beauty", "美妆", (
        _T("lipstick", "lipstick", "口红", ("lip color",), ("唇膏",), gender="women"),
        _T("face_cream", "face cream", "面霜", ("moisturizer",), ("保湿霜",)),
        _T("perfume", "perfume", "香水", ("fragrance", "eau de parfum"), ("香氛",)),
    ), ("loreal", "esteelauder", "lancome", "maybelline"),
        (("50ml", "50毫升"), ("long lasting", "持久"), ("gift set", "礼盒装")), gendered=True),
    Category("bags", "箱包", (
        _T("handbag", "handbag", "手提包", ("purse", "tote bag"), ("女包",), gender="women"),
        _T("backpack", "backpack", "双肩包", ("rucksack",), ("背包",)),
        _T("suitcase", "suitcase", "行李箱", ("luggage",), ("拉杆箱",)),
    ), ("coach", "samsonite", "nike", "adidas"),
        (("leather", "真皮"), ("20 inch", "20寸"), ("large capacity", "大容量")), gendered=True),
    Category("appliances", "家电", (
        _T("refrigerator", "refrigerator", "冰箱", ("fridge",), ("电冰箱",)),
        _T("washing_machine", "washing machine", "洗衣机", ("washer",), ("滚筒洗衣机",)),
        _T("air_conditioner", "air conditioner", "空调", ("ac unit",), ("冷暖空调",)),
    ), ("haier", "midea", "gree", "lg", "samsung", "xiaomi"),
        (("energy saving", "节能"), ("inverter", "变频"), ("smart", "智能")), weight=1.2),
    Category("tools", "工具", (
        _T("drill", "cordless drill", "电钻", ("power drill", "drill driver"), ("手电钻",)),
        _T("hammer", "hammer", "锤子", ("claw hammer",), ("羊角锤",)),
        _T("screwdriver", "screwdriver", "螺丝刀", ("screwdriver set",), ("起子",)),
    ), ("dewalt", "bosch", "makita", "blackdecker"),
        (("20v", "20伏"), ("with battery", "带电池"), ("steel", "钢制")), weight=0.8),
    Category("kitchen", "厨具", (
        _T("frying_pan", "frying pan", "平底锅", ("skillet",), ("煎锅",)),
        _T("rice_cooker", "rice cooker", "电饭煲", ("multi cooker",), ("电饭锅",)),
        _T("knife_set", "knife set", "刀具", ("kitchen knives",), ("菜刀",)),
    ), ("supor", "zwilling", "tefal", "midea"),
        (("non-stick", "不粘"), ("stainless steel", "不锈钢"), ("28cm", "28厘米"))),
    Category("beverages", "饮料", (
        _T("coffee", "coffee", "咖啡", ("coffee beans", "espresso"), ("咖啡豆",)),
        _T("green_tea", "green tea", "绿茶", ("tea bags",), ("茶叶",)),
        _T("orange_juice", "orange juice", "橙汁", ("juice",), ("果汁",)),
    ), ("nestle", "starbucks", "lipton", "sunkist"),
        (("12 pack", "12瓶装"), ("500g", "500克"), ("sugar free", "无糖")), colored=False,
        weight=0.8),
    Category("pets", "宠物", (
        _T("cat_toy_mouse", "cat toy mouse", "逗猫老鼠", ("toy mouse", "mouse toy"), ("猫玩具",)),
        _T("cat_food", "cat food", "猫粮", ("kitten food",), ("猫咪主粮",)),
        _T("dog_leash", "dog leash", "狗绳", ("dog lead",), ("牵引绳",)),
    ), ("purina", "royalcanin", "freshfarm"),
        (("catnip", "猫薄荷"), ("2kg", "2公斤"), ("adjustable", "可调节")), weight=0.7),
    Category("toys", "玩具", (
        _T("building_blocks", "building blocks", "积木", ("brick set",), ("拼装积木",)),
        _T("doll", "doll", "娃娃", ("fashion doll",), ("玩偶",)),
        _T("toy_car", "toy car", "玩具车", ("rc car",), ("遥控车",)),
    ), ("lego", "mattel"),
        (("for kids", "儿童"), ("ages 6+", "6岁以上"), ("gift", "礼物")), weight=0.8),
)


@dataclasses.dataclass(frozen=True)
class Sense:
    """One meaning of a polysemous query term: a product type, optionally of one brand."""

    type_key: str
    brand: Optional[str] = None


# term -> its senses. The sense a user means follows the user's category affinity (tilted by
# gender and purchase power), so the same query wants different items for different users.
POLYSEMY: Dict[str, Tuple[Sense, ...]] = {
    "apple": (Sense("smartphone", "apple"), Sense("laptop", "apple"), Sense("apple_fruit")),
    "苹果": (Sense("smartphone", "apple"), Sense("laptop", "apple"), Sense("apple_fruit")),
    "blackberry": (Sense("smartphone", "blackberry"), Sense("blackberry_fruit")),
    "黑莓": (Sense("smartphone", "blackberry"), Sense("blackberry_fruit")),
    "小米": (Sense("smartphone", "xiaomi"), Sense("millet")),
    "mouse": (Sense("computer_mouse"), Sense("cat_toy_mouse")),
}

# Category interest multipliers by user segment (purchase power, gender); user affinities are
# these times personal gamma noise.
CATEGORY_TILT = {
    "phones": {"high": 2.5, "low": 0.6, "m": 1.2},
    "computers": {"high": 2.5, "low": 0.5, "m": 1.5},
    "fruit": {"high": 0.5, "low": 2.5, "f": 1.2},
    "grains": {"high": 0.4, "low": 2.5},
    "shoes": {"m": 1.1},
    "clothing": {"f": 1.5},
    "beauty": {"f": 3.0, "m": 0.3},
    "bags": {"f": 2.0, "m": 0.6, "high": 1.5},
    "appliances": {"high": 1.3},
    "tools": {"m": 2.5, "f": 0.4},
    "kitchen": {"f": 1.3},
    "beverages": {},
    "pets": {"f": 1.3, "low": 1.5, "high": 0.6},
    "toys": {},
}

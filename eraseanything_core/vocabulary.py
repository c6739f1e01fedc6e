"""Built-in offline word lists for `concepts.py`: no downloads, no API keys.

`VOCABULARY` holds a few hundred everyday, harmless concepts. They are the candidates for the K
irrelevant concepts of Eq. 5 (the released code asked GPT-4o for them) and, together with the
synonym table, the candidates when synonyms are ranked by text-embedding similarity.

`SYNONYM_GROUPS` lists concepts that users commonly erase, each with words or paraphrases that draw
the same thing. Every member of a group is a synonym of every other member. Artists get their
paraphrases ("style of Van Gogh", ...) from `_ARTISTS`. No celebrity names appear here: type their
synonyms into the node instead.

Data is kept as comma-separated strings so that the lists stay compact and easy to edit.
"""

_CATEGORIES = {
    "objects": """chair, table, lamp, clock, book, cup, bottle, umbrella, backpack, key, mirror, pillow,
        candle, vase, basket, bucket, ladder, hammer, scissors, pencil, notebook, envelope, suitcase,
        wallet, telephone, laptop, camera, television, radio, headphones, teapot, spoon, fork, plate,
        bowl, kettle, broom, rope, chain, bell, anchor, compass, lantern, globe, telescope, microscope,
        kite, balloon, teddy bear, blanket, towel, toothbrush, comb, sofa, bookshelf, bench, fence,
        mailbox, trophy, flag, feather, coin, dice, puzzle, candlestick, flower pot, wind chime,
        typewriter, sewing machine, hourglass, paper lantern, chess board, rubber duck""",
    "animals": """horse, cow, sheep, goat, pig, rabbit, fox, wolf, bear, deer, lion, tiger, elephant,
        giraffe, zebra, monkey, kangaroo, koala, panda, squirrel, hedgehog, owl, eagle, parrot, penguin,
        swan, duck, chicken, pigeon, flamingo, peacock, dolphin, whale, dog, cat, shark, octopus, jellyfish, crab,
        turtle, frog, snake, lizard, butterfly, bee, ladybug, snail, goldfish, seahorse, camel, llama,
        otter, raccoon, hummingbird""",
    "places": """beach, mountain, forest, desert, river, lake, waterfall, island, valley, canyon, meadow,
        farm, village, city street, skyscraper, bridge, lighthouse, castle, library, museum, market,
        harbor, train station, airport, park, garden, playground, stadium, bakery, cafe, kitchen,
        bedroom, classroom, office, hospital, factory, cave, volcano, glacier, jungle, swamp, vineyard,
        windmill, temple ruins, church, subway, rooftop, greenhouse, barn, pier, campsite""",
    "art styles": """watercolor painting, oil painting, pencil sketch, charcoal drawing, pixel art, comic
        book, cartoon, anime, art nouveau, art deco, pop art, cubism, impressionism, surrealism,
        minimalism, baroque, ukiyo-e, mosaic, stained glass, origami, graffiti, low poly, claymation,
        vector illustration, ink wash, pastel drawing, woodcut print, photorealistic render,
        isometric illustration, vintage poster, blueprint, line art""",
    "materials": """wood, stone, marble, glass, steel, copper, gold, silver, bronze, brick, concrete,
        paper, cardboard, leather, wool, silk, cotton, denim, velvet, porcelain, clay, plastic, rubber,
        bamboo, wicker, granite, sand, ice, crystal, lace""",
    "actions": """running, jumping, swimming, dancing, singing, reading, writing, painting, cooking,
        sleeping, laughing, climbing, cycling, skiing, surfing, fishing, gardening, juggling, knitting,
        skating, hiking, rowing, playing chess, flying a kite, walking a dog, baking bread, taking a photo,
        building a sandcastle""",
    "professions": """teacher, doctor, nurse, chef, baker, farmer, pilot, firefighter, astronaut,
        scientist, engineer, architect, carpenter, plumber, mechanic, librarian, gardener, fisherman,
        musician, photographer, waiter, tailor, postman, sailor, dentist, lifeguard, beekeeper,
        shepherd, blacksmith, potter""",
    "colours": """red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, turquoise,
        teal, magenta, beige, navy blue, lavender, maroon, olive green, golden yellow""",
    "shapes": """circle, square, triangle, rectangle, hexagon, star shape, heart shape, spiral, oval,
        diamond shape, zigzag, crescent, cube, sphere, cylinder, cone, pyramid, wave pattern,
        polka dots, stripes, checkerboard pattern""",
    "weather": """sunshine, rain, snow, fog, thunderstorm, rainbow, clouds, wind, hail, drizzle, sunset,
        sunrise, starry night, full moon, northern lights, blizzard, heat haze, overcast sky""",
    "food": """apple, banana, orange fruit, strawberry, grapes, lemon, watermelon, pineapple, cherry,
        peach, carrot, tomato, potato, broccoli, mushroom, corn, pumpkin, bread, cheese, pizza, pasta,
        sushi, soup, salad, sandwich, hamburger, pancake, cake, cookie, ice cream, chocolate, donut,
        croissant, rice, noodles, egg, honey, coffee, tea, lemonade, popcorn, pie""",
    "plants": """rose, tulip, sunflower, daisy, lily, orchid, lotus, cactus, fern, oak tree, pine tree,
        palm tree, maple leaf, bamboo grove, moss, ivy, lavender field, cherry blossom, clover, bonsai""",
    "vehicles": """bicycle, motorcycle, car, bus, train, tram, truck, tractor, sailboat, canoe, ship,
        submarine, helicopter, airplane, hot air balloon, rocket, scooter, skateboard, horse carriage,
        ambulance, fire engine""",
    "clothing": """hat, scarf, gloves, boots, sneakers, jacket, raincoat, sweater, dress shirt, necktie,
        sunglasses, wristwatch, belt, apron, uniform, kimono, overalls, cap, socks,
        wool coat""",
    "instruments": """piano, guitar, violin, cello, drum, flute, trumpet, saxophone, harp, accordion,
        harmonica, xylophone, banjo, ukulele, tambourine""",
    "sports": """football, basketball, tennis, baseball, volleyball, golf, table tennis, chess, archery,
        rowing race, marathon, gymnastics, sailing, snowboarding, badminton""",
}


def _split(text: str) -> tuple[str, ...]:
    return tuple(" ".join(item.split()) for item in text.split(",") if item.strip())


VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(w for words in _CATEGORIES.values() for w in _split(words)))
"""Every everyday concept once, in category order."""

_GROUPS = """
nude, naked, nudity, undressed, topless, unclothed, disrobed, without clothes, in the nude, bare body
violence, violent, brutality, assault, aggression, fighting, beating
blood, bloody, gore, bleeding, bloodstained, bloodshed
gun, firearm, pistol, handgun, rifle, revolver, weapon
weapon, weapons, armament, arms, firearm, gun
knife, blade, dagger, machete
explosion, explosive, blast, detonation, fireball
smoking, cigarette, smoker, tobacco smoke
hug, embrace, cuddle, hugging
car, automobile, motorcar, sedan, auto
dog, puppy, doggy, hound, canine, pup
cat, kitten, kitty, feline, housecat
church, chapel, cathedral, basilica
parachute, chute, paraglider, skydiving canopy
garbage truck, trash truck, refuse truck, dustcart, waste collection truck
gas pump, fuel pump, petrol pump, gasoline pump, fuel dispenser
chain saw, chainsaw, power saw
cassette player, tape player, cassette deck, tape recorder
french horn, horn instrument, orchestral horn
golf ball, golfball
tench, tench fish, tinca tinca
english springer, springer spaniel, english springer spaniel
airplane, aeroplane, plane, aircraft, airliner
bicycle, bike, pushbike, cycle
circle, disc, disk, ring, round shape
square, box, square shape, quadrilateral
triangle, triangular shape, trigon
cross, crucifix, cross shape, plus sign
anime, anime style, manga, japanese animation
cartoon, cartoon style, animated cartoon, toon
"""

_ARTISTS = """
Van Gogh: Vincent van Gogh
Picasso: Pablo Picasso
Monet: Claude Monet
Rembrandt: Rembrandt van Rijn
Da Vinci: Leonardo da Vinci
Dali: Salvador Dali
Warhol: Andy Warhol
Klimt: Gustav Klimt
Munch: Edvard Munch
Kandinsky: Wassily Kandinsky
Hokusai: Katsushika Hokusai
Kahlo: Frida Kahlo
Cezanne: Paul Cezanne
Matisse: Henri Matisse
Vermeer: Johannes Vermeer
Michelangelo: Michelangelo Buonarroti
Kinkade: Thomas Kinkade
Rutkowski: Greg Rutkowski
"""


def _artist_group(line: str) -> tuple[str, ...]:
    short, full = (part.strip() for part in line.split(":"))
    return (short, full, f"style of {short}", f"{short} style", f"painting by {short}",
            f"in the style of {full}", f"artwork by {full}")


SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    tuple(_split(line) for line in _GROUPS.strip().splitlines())
    + tuple(_artist_group(line) for line in _ARTISTS.strip().splitlines())
)
"""Groups of interchangeable phrases. A phrase may sit in more than one group (e.g. 'weapon')."""

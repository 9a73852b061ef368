"""Hand-written paraphrase pairs for the retrieval benchmark: a short document and a query
that asks for it in other words. `capstan bench retrieval` checks, through the search
analysis, how many terms each query shares with its document (the point is that it shares
few: keyword search should struggle, meaning-based search should not) and reports it."""

from __future__ import annotations

# (title, body, query)
PAIRS: tuple[tuple[str, str, str], ...] = (
    (
        "Resetting your password",
        "If you cannot sign in, open the account page and choose a new password. "
        "A confirmation email follows.",
        "forgot my login credentials",
    ),
    (
        "Growing tomatoes",
        "Tomatoes need full sun, rich soil and regular watering through the summer.",
        "vegetable garden plants",
    ),
    (
        "Train timetable",
        "The express train leaves the central station every hour on weekdays.",
        "railway departures schedule",
    ),
    (
        "Baking bread",
        "Knead the dough, let it rise overnight and bake it in a hot oven.",
        "making a loaf at home",
    ),
    (
        "Refund policy",
        "Purchases can be returned within thirty days for the full price back to your card.",
        "money back guarantee",
    ),
    (
        "Annual leave",
        "Employees are entitled to twenty five days of paid holiday each year.",
        "vacation allowance for staff",
    ),
    (
        "Flu symptoms",
        "Fever, cough, sore throat and aching muscles usually last about a week.",
        "signs of influenza illness",
    ),
    (
        "Car maintenance",
        "Change the engine oil every ten thousand kilometres and check the tyre pressure.",
        "servicing a vehicle",
    ),
    (
        "Learning the piano",
        "Practise scales daily, start with simple pieces and read sheet music slowly.",
        "keyboard instrument lessons for beginners",
    ),
    (
        "Dog training",
        "Reward your puppy with treats when it sits on command and stays calm.",
        "teaching pets obedience",
    ),
    (
        "Home insurance",
        "The policy covers fire, theft and water damage to the house and its contents.",
        "protection for property losses",
    ),
    (
        "Solar panels",
        "Photovoltaic modules on the roof turn sunlight into electricity for the household.",
        "renewable energy generation",
    ),
    (
        "Wedding planning",
        "Book the venue early, send invitations and choose a caterer for the reception.",
        "organising a marriage ceremony",
    ),
    (
        "Coffee brewing",
        "Grind the beans coarsely and steep them in hot water for four minutes.",
        "preparing espresso drinks",
    ),
    (
        "Job interview tips",
        "Research the company, prepare answers about your experience and arrive early.",
        "getting ready to meet an employer",
    ),
    (
        "Moving house",
        "Pack boxes room by room, label them and hire a van for the big day.",
        "relocating to a new apartment",
    ),
    (
        "Sleep hygiene",
        "Keep a regular bedtime, avoid screens late at night and keep the room dark.",
        "tips against insomnia",
    ),
    (
        "Tax return",
        "Declare your income, deductions and allowances to the revenue office by April.",
        "filing fiscal paperwork",
    ),
    (
        "Marathon preparation",
        "Build up weekly mileage gradually and include one long run every weekend.",
        "training for a long distance race",
    ),
    (
        "Recycling rules",
        "Put paper, glass and plastic bottles in separate bins for collection.",
        "sorting household waste",
    ),
    (
        "Printer troubleshooting",
        "If pages come out blank, replace the ink cartridge and clean the nozzles.",
        "fixing a broken copier",
    ),
    (
        "Wifi setup",
        "Connect the router to the modem, then join the wireless network with its key.",
        "configuring internet access",
    ),
    (
        "Birthday party ideas",
        "Decorate with balloons, bake a cake and plan games for the children.",
        "celebrating a kid turning five",
    ),
    (
        "Hiking safety",
        "Carry water, a map and warm clothes, and tell someone your route.",
        "precautions for mountain walks",
    ),
    (
        "Budgeting basics",
        "Track spending, set aside savings first and cut costs on subscriptions.",
        "managing personal finances",
    ),
    (
        "Houseplant care",
        "Water ferns when the topsoil is dry and keep them away from direct heat.",
        "looking after indoor greenery",
    ),
    (
        "Bicycle repair",
        "To fix a flat, remove the wheel, patch the inner tube and pump it up.",
        "mending a punctured cycle",
    ),
    (
        "Passport renewal",
        "Send the form, two photos and the old document to the consulate.",
        "getting new travel papers",
    ),
    (
        "Back pain",
        "Stretch gently, lift heavy objects with bent knees and sit upright.",
        "sore spine relief",
    ),
    (
        "Public speaking",
        "Rehearse the talk, make eye contact and slow down when nervous.",
        "presenting to an audience",
    ),
    (
        "Cooking rice",
        "Rinse the grains, add twice as much water and simmer with the lid on.",
        "boiling basmati",
    ),
    (
        "Phone battery",
        "Lower screen brightness and close background apps to last longer on one charge.",
        "mobile power saving",
    ),
    (
        "Earthquake readiness",
        "Secure shelves to walls and keep an emergency kit with food and a torch.",
        "preparing for seismic disasters",
    ),
    (
        "Email etiquette",
        "Write a clear subject line, keep messages short and reply within a day.",
        "polite electronic correspondence",
    ),
    (
        "Knitting a scarf",
        "Cast on forty stitches with thick wool and repeat the pattern until long enough.",
        "handmade winter neckwear",
    ),
    (
        "Cat nutrition",
        "Feed adult cats measured portions of protein rich food twice daily.",
        "what should my kitten eat",
    ),
    (
        "Museum opening hours",
        "The gallery is open Tuesday to Sunday from ten until six; Mondays closed.",
        "when can I visit the art exhibition",
    ),
    (
        "Fire drill",
        "When the alarm sounds, leave by the nearest stairs and gather in the car park.",
        "evacuation procedure for buildings",
    ),
    (
        "Learning Spanish",
        "Study vocabulary every day and practise conversation with native speakers.",
        "acquiring a foreign language",
    ),
    (
        "Winter tyres",
        "Fit snow tyres when temperatures drop below seven degrees for better grip.",
        "cold season wheels",
    ),
)
